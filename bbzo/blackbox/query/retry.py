"""Retries: exponential backoff with full jitter, ``Retry-After``, a cap on total waiting.

Targets raise ``bbzo.errors.TransientError`` for failures worth retrying (HTTP 408, 409, 425,
429, 5xx, timeouts, dropped connections; built-in ``TimeoutError`` and ``ConnectionError`` are
treated the same) and ``bbzo.errors.PermanentError`` for the rest; ``error_for_status``
(``bbzo.blackbox.protocol``) picks the right one from an HTTP status. When retrying stops,
``retrying`` raises a plain ``TargetError`` (never a ``TransientError``) so that no outer layer
retries again: stacked retry layers are how clients end up stalled for half an hour.

A burst of 429 answers is reported, not swallowed: ``StormWatch`` logs a warning and calls a
hook the CLI can render when ``storm_count`` of them arrive within ``storm_window_s``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from bbzo.checks import int_at_least, non_negative
from bbzo.errors import PermanentError, TargetError, TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")

_HINTS = {
    400: "the request was rejected: check the model name and parameters (max_tokens, logprobs)",
    401: "authentication failed: check that the API key (e.g. OPENAI_API_KEY) is set and valid",
    403: "permission denied: check that the key may use this model or project",
    404: "not found: check the model name and the base URL",
    413: "request too large: shorten the prompt or lower max_tokens",
    422: "the request could not be processed: check the parameters",
}


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def permanent_message(err: PermanentError, who: str) -> str:
    """One line naming the status and what to check."""
    status = f"HTTP {err.status}" if err.status is not None else "error"
    hint = _HINTS.get(err.status, "retrying will not help; check the request and the target")
    return f"{who}: {status}, {hint} ({_one_line(err)})"


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried.

    Args:
        max_attempts: most calls per request, the first included.
        base_delay_s: backoff scale; attempt k waits uniform(0, min(max_delay_s, base * 2^(k-1))).
        max_delay_s: cap on one jittered backoff, seconds (a longer ``Retry-After`` still wins).
        max_total_wait_s: cap on all waiting for one request, seconds; beyond it, give up.
        storm_count: this many 429s ...
        storm_window_s: ... within this many seconds trigger a visible warning.
    """

    max_attempts: int = 6
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    max_total_wait_s: float = 300.0
    storm_count: int = 3
    storm_window_s: float = 60.0

    def __post_init__(self) -> None:
        int_at_least("max_attempts", self.max_attempts)
        int_at_least("storm_count", self.storm_count)
        for name in ("base_delay_s", "max_delay_s", "max_total_wait_s", "storm_window_s"):
            non_negative(name, getattr(self, name))

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): full jitter, at least
        ``retry_after``."""
        jitter = rng.uniform(0.0, min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)))
        return max(jitter, retry_after or 0.0)


class StormWatch:
    """Warns (log + ``on_warning``) when 429s repeat; at most once per window."""

    def __init__(self, policy: RetryPolicy, who: str,
                 on_warning: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.who = who
        self.on_warning = on_warning
        self.clock = clock
        self.warnings = 0
        self._times: deque[float] = deque()
        self._quiet_until = -math.inf

    def note(self) -> None:
        """Record one 429 answer; warn if the storm threshold is reached."""
        now = self.clock()
        window = self.policy.storm_window_s
        self._times.append(now)
        while self._times[0] <= now - window:
            self._times.popleft()
        if len(self._times) >= self.policy.storm_count and now >= self._quiet_until:
            self._quiet_until = now + window
            self.warnings += 1
            message = (f"{self.who} answered 429 (rate limited) {len(self._times)} times in "
                       f"{window:g} s; requests are being slowed down: lower the concurrency "
                       f"or set rpm/tpm to your account's limits")
            log.warning(message)
            if self.on_warning is not None:
                self.on_warning(message)


def _as_transient(err: Exception) -> TransientError:
    if isinstance(err, TransientError):
        return err
    return TransientError(_one_line(err), status=None)


async def retrying(attempt: Callable[[int], Awaitable[T]], policy: RetryPolicy, who: str, *,
                   on_transient: Callable[[TransientError], None] | None = None,
                   sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                   rng: random.Random | None = None) -> T:
    """Call ``attempt(k)`` for k = 1, 2, ... until it returns, retrying transient failures.

    Raises ``PermanentError`` (one line with status and hint) at once on a permanent failure,
    and ``TargetError`` when attempts or the total wait run out. ``on_transient(err)`` hears of
    every transient failure.
    """
    rng = rng or random.Random()
    waited = 0.0
    k = 0
    while True:
        k += 1
        try:
            return await attempt(k)
        except PermanentError as err:
            raise PermanentError(permanent_message(err, who), status=err.status) from err
        except (TransientError, TimeoutError, ConnectionError) as err:
            transient = _as_transient(err)
            if on_transient is not None:
                on_transient(transient)
            status = transient.status if transient.status is not None else "timeout/connection"
            last = f"last failure ({status}): {_one_line(err)}"
            if k >= policy.max_attempts:
                raise TargetError(f"{who}: gave up after {k} attempts, {last}") from err
            wait = policy.delay(k, transient.retry_after, rng)
            if waited + wait > policy.max_total_wait_s:
                raise TargetError(f"{who}: gave up after {k} attempts: waiting {wait:.1f} s more "
                                  f"would pass max_total_wait_s={policy.max_total_wait_s:g}; "
                                  f"{last}") from err
            await sleep(wait)
            waited += wait
