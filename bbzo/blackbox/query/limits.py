"""Requests-per-minute and tokens-per-minute limits, shared by every task of a query layer.

``RateLimiter`` keeps a log of admissions over a sliding window (60 s) and admits a call only
if, counting it, the window ending now holds at most ``rpm`` calls and ``tpm`` reserved tokens.

Why no window can ever hold more than ``rpm`` admissions: admissions are checked and logged
under one lock with a non-decreasing clock. Take any window [s, s + W) and its latest admission,
at time t. Every other admission in the window happened at a time in [s, t], which lies in
(t - W, t], so it was in the log when t was checked, and the check let t in only if fewer than
``rpm`` were there. The same argument bounds the reserved tokens by ``tpm``; a correction after
the reply (``correct``) replaces an estimate by the true count, so with estimates that are upper
bounds the true tokens in any window stay within ``tpm`` too.

Token sizes: ``token_estimate`` (prompt characters / 4 + max_tokens) is what the limiter
reserves; ``token_bound`` is a true upper bound (every BPE token covers at least one UTF-8 byte)
that budgets reserve so they can never be overrun.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from bbzo.blackbox.protocol import Request
from bbzo.errors import InputError

# Completion tokens a request kind produces when params carry no max_tokens (None: unbounded).
_COMPLETION_DEFAULT = {"chat": None, "generate": None, "letter_logprobs": 1,
                       "option_loglik": 1, "embed": 0, "classify": 0}
_FRAMING_TOKENS = 4  # per string of the payload: role markers, separators (upper bound)
_MIN_SLEEP_S = 1e-6


@dataclass(frozen=True)
class RateLimits:
    """Per-target limits; None means unlimited.

    Args:
        rpm: most target calls in any 60 s window.
        tpm: most tokens (prompt + completion, as reserved) in any 60 s window.
    """

    rpm: int | None = None
    tpm: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value <= 0):
                raise InputError(f"rate limit {name} must be a positive integer or None, "
                                 f"got {value!r}")


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def completion_bound(request: Request) -> int | None:
    """Most completion tokens ``request`` can produce, or None when unbounded."""
    if "max_tokens" in request.params:
        return int(request.params["max_tokens"])
    return _COMPLETION_DEFAULT[request.kind]


def token_estimate(request: Request) -> int:
    """What the rate limiter reserves: ceil(prompt chars / 4) + max_tokens (0 when unset)."""
    chars = sum(len(text) for text in _strings(request.payload))
    return math.ceil(chars / 4) + (completion_bound(request) or 0)


def token_bound(request: Request) -> int | None:
    """An upper bound on prompt + completion tokens (UTF-8 bytes + framing), or None."""
    completion = completion_bound(request)
    if completion is None:
        return None
    texts = list(_strings(request.payload))
    return sum(len(text.encode()) + _FRAMING_TOKENS for text in texts) + _FRAMING_TOKENS \
        + completion


class _Slot:
    """One admission in the log: when, and how many tokens it holds."""

    __slots__ = ("time", "tokens", "live")

    def __init__(self, time_s: float, tokens: int) -> None:
        self.time = time_s
        self.tokens = tokens
        self.live = True


class RateLimiter:
    """Admits calls within ``RateLimits`` over a sliding window; safe across tasks and threads.

    Args:
        limits: the rpm / tpm limits.
        window_s: window length, seconds (60 for per-minute limits; smaller in tests).
        clock: non-decreasing time in seconds.
        sleep: async sleep used while waiting for capacity.
    """

    def __init__(self, limits: RateLimits | None = None, *, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        if not window_s > 0:
            raise InputError(f"window_s must be positive seconds, got {window_s!r}")
        self.limits = limits or RateLimits()
        self.window_s = window_s
        self.clock = clock
        self._sleep = sleep
        self._log: deque[_Slot] = deque()
        self._tokens = 0
        self._resume_at = -math.inf
        self._lock = threading.Lock()

    async def acquire(self, tokens: int = 0) -> _Slot:
        """Wait until a call holding ``tokens`` fits, log it, and return its slot."""
        tpm = self.limits.tpm
        if tpm is not None and tokens > tpm:
            raise InputError(f"a request needs ~{tokens} tokens but the limit is {tpm} tokens "
                             f"per minute; raise tpm or shorten the request")
        while True:
            slot, wait = self._try(tokens)
            if slot is not None:
                return slot
            await self._sleep(max(wait, _MIN_SLEEP_S))

    def correct(self, slot: _Slot, tokens: int) -> None:
        """Replace a slot's estimated tokens by the true count once the reply is in."""
        with self._lock:
            if slot.live:
                self._tokens += tokens - slot.tokens
            slot.tokens = tokens

    def cool_down(self, seconds: float) -> None:
        """Admit nothing for ``seconds`` from now (the server said ``Retry-After``)."""
        with self._lock:
            self._resume_at = max(self._resume_at, self.clock() + seconds)

    def _try(self, tokens: int) -> tuple[_Slot | None, float]:
        """Admit now, or return how long to wait before capacity may have freed up."""
        with self._lock:
            now = self.clock()
            while self._log and self._log[0].time <= now - self.window_s:
                old = self._log.popleft()
                old.live = False
                self._tokens -= old.tokens
            wait = self._resume_at - now
            rpm, tpm = self.limits.rpm, self.limits.tpm
            if rpm is not None and len(self._log) >= rpm:
                wait = max(wait, self._log[len(self._log) - rpm].time + self.window_s - now)
            if tpm is not None and self._tokens + tokens > tpm:
                excess = self._tokens + tokens - tpm
                for old in self._log:
                    excess -= old.tokens
                    if excess <= 0:
                        wait = max(wait, old.time + self.window_s - now)
                        break
            if wait > 0:
                return None, wait
            slot = _Slot(now, tokens)
            self._log.append(slot)
            self._tokens += tokens
            return slot, 0.0
