"""Which prompt tokens a corruption touches: a boolean mask over a prompt's token ids.

- ``all_but_last`` (default): every prompt token except the last.
- ``entities``: tokens that overlap an entity-like span of the prompt's text: runs of
  capitalised words (question words and the like left out) and keyword matches, aligned to
  tokens by character offsets. No offline named-entity model exists, so this rule stands in for
  the paper's NER; a prompt with no such span falls back to ``all_but_last``.

The last prompt token is never selected: the position that predicts the answer stays clean.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from bbzo.errors import InputError

MODES = ("all_but_last", "entities")
CAPITALISED = re.compile(r"\b[A-Z][\w'.\-]*(?:\s+[A-Z][\w'.\-]*)*")
NOT_ENTITIES = frozenset("""a an the what who whom whose which how where when why can could
would should does did do is are was were has have had in on of for and or but if question answer
please tell name describe explain i you he she it we they this that these those""".split())


def token_offsets(tokenizer, ids: Sequence[int]) -> list[tuple[int, int]]:
    """Character span of each token in ``tokenizer.decode(ids)`` (from prefix decodes)."""
    spans, start = [], 0
    for i in range(len(ids)):
        end = len(tokenizer.decode(list(ids[:i + 1])))
        spans.append((start, max(end, start)))
        start = max(end, start)
    return spans


def entity_spans(text: str, keywords: Sequence[str] = ()) -> list[tuple[int, int]]:
    """Character spans of capitalised-word runs and of keyword matches in ``text``."""
    spans = []
    for m in CAPITALISED.finditer(text):
        words = m.group().split()
        while words and words[0].lower().strip(".'") in NOT_ENTITIES:
            words.pop(0)
        if words:
            spans.append((m.end() - len(" ".join(words)), m.end()))
    for word in keywords:
        spans += [m.span() for m in re.finditer(rf"\b{re.escape(word)}\b", text, re.I)]
    return spans


def select_tokens(ids: Sequence[int], tokenizer=None, mode: str = "all_but_last",
                  focus: str | None = None, keywords: Sequence[str] = ()) -> np.ndarray:
    """Boolean mask (len(ids),) of the tokens to corrupt.

    Args:
        ids: the prompt's token ids as the model sees them (chat template included).
        tokenizer: needed for ``entities`` (to decode and align).
        mode: ``all_but_last`` or ``entities``.
        focus: the user's text; with ``entities`` only spans inside its last occurrence in the
            decoded prompt count (so a chat template's system text is left alone).
        keywords: extra words whose matches count as entities.
    """
    if mode not in MODES:
        raise InputError(f"unknown token selection {mode!r}; choose one of {', '.join(MODES)}")
    mask = np.zeros(len(ids), dtype=bool)
    mask[:-1] = True
    if mode == "all_but_last" or len(ids) < 2:
        return mask
    text = tokenizer.decode(list(ids))
    lo = text.rfind(focus) if focus else -1
    window = text[lo:lo + len(focus)] if lo >= 0 else text
    lo = max(lo, 0)
    spans = [(a + lo, b + lo) for a, b in entity_spans(window, keywords)]
    chosen = np.array([any(a < e and s < b for a, b in spans)
                       for s, e in token_offsets(tokenizer, ids)], dtype=bool)
    chosen[-1] = False
    return chosen if chosen.any() else mask
