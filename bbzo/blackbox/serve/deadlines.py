"""How long the server lets one completion take before it stops the model and answers 504.

A fixed ``request_timeout`` (seconds) applies to every completion. Without one the deadline is
derived from the request: ``BASE_S + SLACK * max_tokens * passes * token_s`` where ``passes`` is
the number of ``max_batch``-row generation passes its choices need and ``token_s`` the seconds
per generated token of a full batch, measured once at start-up (``measure_token_seconds``: one
untimed one-token call to warm the model up, then one batch of short greedy completions through
the model worker). ``BASE_S`` covers queueing and the
prompt's prefill, ``SLACK`` a busy machine and batch neighbours. The clock starts when the
request reaches the model queue (after any injected fault latency).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from bbzo.blackbox.protocol import Request
from bbzo.blackbox.serve.batcher import Batcher
from bbzo.errors import InputError

log = logging.getLogger(__name__)
BASE_S = 10.0
SLACK = 4.0
WARMUP_TOKENS = 8
FALLBACK_TOKEN_S = 1.0  # when the warm-up fails: assume a slow model


@dataclass(frozen=True)
class Deadlines:
    """The deadline policy of one server.

    Args:
        token_s: measured seconds per generated token of a full batch.
        max_batch: rows per generation pass.
        fixed_s: a fixed deadline in seconds for every request, or None to derive it.
    """

    token_s: float
    max_batch: int
    fixed_s: float | None = None

    def __post_init__(self) -> None:
        if self.fixed_s is not None and not (
                isinstance(self.fixed_s, (int, float)) and not isinstance(self.fixed_s, bool)
                and math.isfinite(self.fixed_s) and self.fixed_s > 0):
            raise InputError(f"request_timeout must be a positive number of seconds or None, "
                             f"got {self.fixed_s!r}")

    def seconds(self, max_tokens: int, rows: int) -> float:
        """The deadline of a request of ``rows`` choices of up to ``max_tokens`` tokens each."""
        if self.fixed_s is not None:
            return float(self.fixed_s)
        passes = math.ceil(rows / self.max_batch)
        return BASE_S + SLACK * max(max_tokens, 1) * passes * self.token_s


def measure_token_seconds(batcher: Batcher) -> float:
    """Seconds per generated token of a full batch of short greedy chats through ``batcher``
    (the whole call over its longest completion, so prefill is counted in: an over-estimate)."""
    rows = min(batcher.max_batch, 8)

    def chats(n: int, max_tokens: int) -> list[Request]:
        params = {"max_tokens": max_tokens, "temperature": 0.0, "seed": 0}
        return [Request("chat", {"messages": [{"role": "user", "content": f"Hello {i}"}]},
                        params) for i in range(n)]

    try:
        batcher.submit(chats(1, 1)).result()  # the first call pays one-off set-up costs
        start = time.perf_counter()
        responses = batcher.submit(chats(rows, WARMUP_TOKENS)).result()
    except Exception as err:  # any failure: fall back to a safe figure, and say so
        log.warning("warm-up generation failed (%s); deadlines assume %.1f s per token",
                    err, FALLBACK_TOKEN_S)
        return FALLBACK_TOKEN_S
    elapsed = time.perf_counter() - start
    return elapsed / max(1, max(r.usage.completion_tokens for r in responses))
