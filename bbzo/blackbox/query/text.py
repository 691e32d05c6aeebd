"""Text requests: one prompt sent as ``chat`` (a user message, after an optional system
message) or as ``generate`` (the raw text, no chat template), whichever a target answers.

API models answer ``chat``; local causal LMs answer ``generate`` (and ``chat`` when their
tokenizer has a template). Every method that writes or judges text picks the kind once with
``text_kind`` (so a target that answers neither is refused before anything is sent) and builds
each request with ``text_request``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bbzo.blackbox.protocol import Request
from bbzo.blackbox.targets.base import Target
from bbzo.errors import InputError

TEXT_KINDS = ("chat", "generate")


def text_kind(target: Target, order: Sequence[str], role: str) -> str:
    """The first kind in ``order`` (``chat``/``generate``, most wanted first) that ``target``
    answers; InputError naming ``role`` (``proposer``, ``judge``, ...) when it answers none."""
    unknown = [kind for kind in order if kind not in TEXT_KINDS]
    if unknown or not order:
        raise InputError(f"text request kinds must be among {', '.join(TEXT_KINDS)}, got "
                         f"{list(order)!r}")
    for kind in order:
        if kind in target.capabilities:
            return kind
    raise InputError(f"{role} {target.id} cannot answer {' or '.join(order)} requests; choose "
                     f"another model")


def text_request(kind: str, prompt: str, params: Mapping[str, Any], *,
                 system: str | None = None, sample: int = 0) -> Request:
    """A ``kind`` request for ``prompt``: ``chat`` sends ``[system message,] user message``;
    ``generate`` sends the text, ``system`` first with a blank line after it.

    Args:
        kind: ``chat`` or ``generate`` (from ``text_kind``).
        prompt: the text (the user message).
        params: sampling parameters (``temperature``, ``max_tokens``, ``seed``, ``stop``).
        system: a system message, or None.
        sample: the request's sample index (distinct draws of the same prompt).
    """
    if kind == "chat":
        messages = [{"role": "user", "content": prompt}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        payload: dict[str, Any] = {"messages": messages}
    elif kind == "generate":
        payload = {"prompt": prompt if system is None else f"{system}\n\n{prompt}"}
    else:
        raise InputError(f"text request kind must be one of {', '.join(TEXT_KINDS)}, got "
                         f"{kind!r}")
    return Request(kind, payload, dict(params), sample=sample)
