"""Reading structured answers out of free LLM text: the first JSON object that fits, 0/1-style
flags (shared by the proposer, the checkers' judge and the evaluation judge), and the option
letter of an answer (shared by the sampling objective and ASR@K)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

FLAGS = {"1": 1, "0": 0, "true": 1, "false": 0, "yes": 1, "no": 0}
WORD_LETTERS = ("A", "I")  # capitals that are also English words ("A country", "I think")
_STANDALONE = re.compile(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])")
_WORD_FOLLOWS = re.compile(r"\s+[a-z]")


def parse_letter(text: str, letters: Sequence[str]) -> str | None:
    """The option letter an answer gives, or None.

    Rule: the first capital in ``letters`` that stands alone, i.e. not next to another letter
    or digit: ``B``, ``B.``, ``B)``, ``(B)``, ``**B**``, ``option B``, ``answer: B``,
    ``I think B`` all give B; ``ABBA``, ``B2`` and ``Berlin`` give nothing. ``A`` and ``I``
    followed by a space and a lowercase letter are read as the English words (``A country``,
    ``I think``), not as options; followed by anything else (``A.``, ``A)``, ``A Paris``, the
    end) they are options.
    """
    for m in _STANDALONE.finditer(text):
        letter = m.group(1)
        if letter in letters and not (letter in WORD_LETTERS
                                      and _WORD_FOLLOWS.match(text, m.end())):
            return letter
    return None


def first_json_object(text: str, fits: Callable[[dict], bool]) -> dict | None:
    """The first JSON object embedded anywhere in ``text`` for which ``fits`` is true."""
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            obj, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and fits(obj):
            return obj
    return None


def flag_value(value: object) -> int | None:
    """1 or 0 for 1/0, true/false, yes/no (any case); None otherwise."""
    return FLAGS.get(str(value).lower())


def loose_flag(text: str, key: str) -> int | None:
    """A ``key: 1``-style pair anywhere in ``text`` (quotes and ``=`` allowed), or None."""
    m = re.search(rf'"?{re.escape(key)}"?\s*[:=]\s*"?(1|0|true|false|yes|no)\b', text,
                  re.IGNORECASE)
    return None if m is None else FLAGS[m.group(1).lower()]
