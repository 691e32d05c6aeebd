"""The bottom of ``bbzo.blackbox``: what travels on the one road every query takes (``Request``
in, ``Response`` out) and how an HTTP status becomes an error. ``targets`` and ``query`` both
import this module and it imports neither.

A request is plain JSON data, frozen at creation: its canonical key (the ledger's primary key)
is computed once from a canonical JSON dump, so later mutation of the caller's dicts cannot
change it (one popular client computed keys on mutated messages and missed its own cache).

Kinds of request (a target declares which it supports in ``capabilities``):

| kind | payload | output |
| --- | --- | --- |
| ``chat`` | ``messages`` (OpenAI format) | ``{"text", "logprobs"?}`` (per-token, with top-k) |
| ``letter_logprobs`` | ``prompt``/``messages``, ``letters`` | ``{"logprobs", "coverage"}`` |
| ``option_loglik`` | ``prompt``, ``options`` | ``{"loglik": [float], "ntokens": [int]}`` |
| ``generate`` | ``prompt`` or ``messages`` | ``{"text"}`` |
| ``embed`` | ``texts`` | ``{"embeddings": [[float]]}`` |
| ``classify`` | ``inputs`` (nested lists) | ``{"probs": [[float]]}`` |

``params`` holds generation settings (``max_tokens``, ``temperature``, ``top_logprobs``, ``seed``,
``chat_template``...). ``sample`` distinguishes repeated draws of one stochastic request: the
same request with the same sample index is answered from the ledger, a new index is a new draw.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from bbzo.errors import InputError, PermanentError, TargetError, TransientError

KINDS = ("chat", "letter_logprobs", "option_loglik", "generate", "embed", "classify")


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, non-ASCII kept; floats as Python reprs."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InputError(f"request must be plain JSON data (str, numbers, lists, dicts): {err}") \
            from None


@dataclass(frozen=True)
class Request:
    """One query for a target.

    Attributes:
        kind: one of ``KINDS``.
        payload: the inputs (see the module table); JSON data.
        params: generation settings; JSON data.
        sample: index of this draw among repeated draws of the same request.
    """

    kind: str
    payload: dict
    params: dict = field(default_factory=dict)
    sample: int = 0
    _frozen: str = field(default="", repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown request kind {self.kind!r}; choose one of "
                             f"{', '.join(KINDS)}")
        if not isinstance(self.sample, int) or self.sample < 0:
            raise InputError(f"sample must be a non-negative integer, got {self.sample!r}")
        frozen = canonical_json({"kind": self.kind, "payload": self.payload,
                                 "params": self.params, "sample": self.sample})
        object.__setattr__(self, "_frozen", frozen)
        # Keep our own copies so the caller's later edits cannot reach the request.
        data = json.loads(frozen)
        object.__setattr__(self, "payload", data["payload"])
        object.__setattr__(self, "params", data["params"])

    def key(self, target_id: str) -> str:
        """The ledger key: sha256 of the target's id and the canonical request (hex)."""
        return hashlib.sha256(f"{target_id}\n{self._frozen}".encode()).hexdigest()

    def to_json(self) -> str:
        """The canonical JSON text of the request (what the ledger stores)."""
        return self._frozen


@dataclass
class Usage:
    """Tokens a request consumed (0 for local targets that do not count them)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Response:
    """A target's answer.

    Attributes:
        output: JSON data, shaped by the request kind (module table).
        usage: tokens used.
        cost: US dollars charged for this request (0.0 when answered from the ledger).
        latency_s: wall time of the call that produced it, seconds.
        cached: True when answered from the ledger without contacting the target.
        meta: notes such as ``{"objective": "sampling-estimate"}`` when a fallback was used.
    """

    output: Any
    usage: Usage = field(default_factory=Usage)
    cost: float = 0.0
    latency_s: float = 0.0
    cached: bool = False
    meta: dict = field(default_factory=dict)


_RETRYABLE = frozenset({408, 409, 425, 429})


def error_for_status(status: int, message: str, retry_after: float | None = None) -> TargetError:
    """The exception a target should raise for an HTTP error ``status``."""
    if status in _RETRYABLE or status >= 500:
        return TransientError(message, status=status, retry_after=retry_after)
    return PermanentError(message, status=status)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None
