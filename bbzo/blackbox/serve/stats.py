"""What the server counts, so tests and benchmarks can check clients from the server's side.

Every HTTP request is counted when it arrives and again, by status, when it ends. Every chat
completion whose body was read is logged with its arrival time (``time.monotonic``), its body
key (sha256 of the canonical JSON body), its final status and the tokens it used; per body,
``received`` counts arrivals and ``answered`` counts successful answers handed to a client. A
request whose client hung up before the answer was ready is ``abandoned``: not run, not
answered.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

ABANDONED = "abandoned"


@dataclass
class Arrival:
    """One chat completion as the server saw it.

    Attributes:
        t: arrival time, ``time.monotonic()`` seconds.
        key: sha256 hex of the canonical JSON body.
        status: HTTP status answered, ``"abandoned"``, or None while in progress.
        tokens: prompt + completion tokens of a successful answer, else 0.
    """

    t: float
    key: str
    status: int | str | None = None
    tokens: int = 0


class ServerStats:
    """Thread-safe counters of one server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received = 0
        self._statuses: Counter = Counter()
        self._arrivals: list[Arrival] = []
        self._seen: Counter = Counter()
        self._inflight = 0
        self._peak = 0
        self._held = 0

    def receive(self) -> None:
        """Count one HTTP request on arrival."""
        with self._lock:
            self._received += 1

    def status(self, status: int | str) -> None:
        """Count one HTTP request by how it ended."""
        with self._lock:
            self._statuses[str(status)] += 1

    def arrive(self, t: float, key: str) -> tuple[Arrival, int]:
        """Log a chat completion; return its record and its arrival number for this body."""
        with self._lock:
            arrival = Arrival(t, key)
            self._arrivals.append(arrival)
            self._seen[key] += 1
            self._inflight += 1
            self._peak = max(self._peak, self._inflight)
            return arrival, self._seen[key]

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Count a chat completion as waiting at the door for the duration."""
        with self._lock:
            self._held += 1
        try:
            yield
        finally:
            with self._lock:
                self._held -= 1

    def finish(self, arrival: Arrival, status: int | str, tokens: int = 0) -> None:
        """Close a chat completion's record (and count its status)."""
        with self._lock:
            arrival.status, arrival.tokens = status, tokens
            self._inflight -= 1
            self._statuses[str(status)] += 1

    def snapshot(self) -> dict:
        """``{"received", "by_status", "peak_inflight", "inflight", "held", "completions":
        [Arrival...], "bodies": {key: {"received", "answered"}}}`` as JSON data."""
        with self._lock:
            arrivals = [asdict(a) for a in self._arrivals]
            by_status = dict(self._statuses)
            received, peak = self._received, self._peak
            inflight, held = self._inflight, self._held
        bodies: dict[str, dict[str, int]] = {}
        for a in arrivals:
            body = bodies.setdefault(a["key"], {"received": 0, "answered": 0})
            body["received"] += 1
            body["answered"] += a["status"] == 200
        return {"received": received, "by_status": by_status,
                "peak_inflight": peak, "inflight": inflight, "held": held,
                "completions": arrivals, "bodies": bodies}
