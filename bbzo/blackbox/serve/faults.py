"""Fault injection for ``bbzo serve``: error rates, latency, a request-rate limit, hangs.

Every decision for the k-th arrival of a request body is drawn from a generator seeded by
``(seed, body key, k)``, so a run is reproducible whatever order concurrent requests arrive in,
and a retry of the same body is a fresh draw. The rate limit (``rpm``) is the one exception: it
depends on arrival times, by nature.

Order of effects for one chat completion whose body passed its checks: the rate limit (over
it: 429 with ``Retry-After``, answered at once), then the added latency, then either a hang
(``timeout_rate``: the server sleeps ``timeout_s``, longer than the client's timeout, then
answers 504), an injected error status (``fail``), or the real answer. A hanging request is
never answered successfully, so a client that timed out and retried cannot be answered twice.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bbzo.errors import InputError

TIMEOUT_STATUS = 504


def _probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0.0 <= value <= 1.0:
        raise InputError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise InputError(f"{name} must be a non-negative number of seconds, got {value!r}")
    return float(value)


def parse_fail(text: str) -> tuple[int, float]:
    """``"429:0.2"`` -> ``(429, 0.2)``: an HTTP error status and the probability of sending it."""
    status, sep, rate = text.partition(":")
    try:
        code, p = int(status), float(rate)
    except ValueError:
        code, p = 0, -1.0
    if not sep or not 400 <= code <= 599 or not 0.0 <= p <= 1.0:
        raise InputError(f"bad fault {text!r}: write STATUS:RATE with an HTTP error status "
                         f"400-599 and a probability, e.g. 429:0.2")
    return code, p


@dataclass(frozen=True)
class Faults:
    """What the server does wrong, on purpose.

    Args:
        fail: HTTP error status -> probability of answering with it (e.g. ``{429: 0.2}``).
        latency_s: seconds added to every chat completion.
        jitter_s: extra uniform(0, jitter_s) seconds on top of ``latency_s``.
        rpm: most chat completions admitted in any ``rpm_window_s`` window; the rest get 429
            with ``Retry-After`` (seconds until a slot frees). None: no limit.
        rpm_window_s: the rate-limit window, seconds (60 for a per-minute limit).
        retry_after_s: the ``Retry-After`` sent with injected 429s, seconds.
        timeout_rate: probability that a request hangs for ``timeout_s`` and then gets 504.
        timeout_s: how long a hanging request sleeps; set it above the client's timeout.
        seed: seed of every random draw.
    """

    fail: Mapping[int, float] = field(default_factory=dict)
    latency_s: float = 0.0
    jitter_s: float = 0.0
    rpm: int | None = None
    rpm_window_s: float = 60.0
    retry_after_s: float = 1.0
    timeout_rate: float = 0.0
    timeout_s: float = 30.0
    seed: int = 0

    def __post_init__(self) -> None:
        fail = {}
        for status, rate in dict(self.fail).items():
            if isinstance(status, bool) or not isinstance(status, int) \
                    or not 400 <= status <= 599:
                raise InputError(f"fault status must be an HTTP error code 400-599, "
                                 f"got {status!r}")
            fail[status] = _probability(f"fail rate of {status}", rate)
        object.__setattr__(self, "fail", dict(sorted(fail.items())))
        _probability("timeout_rate", self.timeout_rate)
        if sum(fail.values()) + self.timeout_rate > 1.0 + 1e-12:
            raise InputError("fail rates and timeout_rate add up to more than 1; lower them")
        for name in ("latency_s", "jitter_s", "retry_after_s", "timeout_s"):
            _seconds(name, getattr(self, name))
        if not (isinstance(self.rpm_window_s, (int, float)) and self.rpm_window_s > 0):
            raise InputError(f"rpm_window_s must be positive seconds, got {self.rpm_window_s!r}")
        if self.rpm is not None and (isinstance(self.rpm, bool) or not isinstance(self.rpm, int)
                                     or self.rpm < 1):
            raise InputError(f"rpm must be a positive integer or None, got {self.rpm!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"seed must be an integer, got {self.seed!r}")


@dataclass(frozen=True)
class Decision:
    """What to do with one request.

    Attributes:
        delay_s: sleep this long first.
        status: answer this error status instead of the real answer; None: answer.
        retry_after_s: ``Retry-After`` to send with ``status`` (429s), or None.
        hang_s: for ``status == 504`` from a hang: how long to sleep before answering.
    """

    delay_s: float = 0.0
    status: int | None = None
    retry_after_s: float | None = None
    hang_s: float = 0.0


class FaultInjector:
    """Decides, per arrival, what ``Faults`` does to it. Thread-safe.

    Args:
        faults: the fault settings.
        clock: monotonic seconds, for the rate limit.
    """

    def __init__(self, faults: Faults | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.faults = faults or Faults()
        self.clock = clock
        self._admitted: deque[float] = deque()
        self._lock = threading.Lock()

    def decide(self, key: str, arrival: int) -> Decision:
        """The decision for the ``arrival``-th (1-based) arrival of the body with ``key``."""
        f = self.faults
        wait = self._rate_limit()
        if wait is not None:
            return Decision(status=429, retry_after_s=wait)
        rng = random.Random(f"{f.seed}:{key}:{arrival}")
        delay = f.latency_s + rng.uniform(0.0, f.jitter_s)
        u = rng.random()
        for status, rate in f.fail.items():
            if u < rate:
                return Decision(delay, status, f.retry_after_s if status == 429 else None)
            u -= rate
        if u < f.timeout_rate:
            return Decision(delay, TIMEOUT_STATUS, hang_s=f.timeout_s)
        return Decision(delay)

    def _rate_limit(self) -> float | None:
        """None if a request may be admitted now (and log it), else seconds until one may."""
        rpm = self.faults.rpm
        if rpm is None:
            return None
        window = self.faults.rpm_window_s
        with self._lock:
            now = self.clock()
            while self._admitted and self._admitted[0] <= now - window:
                self._admitted.popleft()
            if len(self._admitted) >= rpm:
                return self._admitted[0] + window - now
            self._admitted.append(now)
            return None
