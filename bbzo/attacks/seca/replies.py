"""Reading structured answers out of free LLM text: the first JSON object that fits, and
0/1-style flags, shared by the proposer, the checkers' judge and the evaluation judge."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

FLAGS = {"1": 1, "0": 0, "true": 1, "false": 0, "yes": 1, "no": 0}


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
