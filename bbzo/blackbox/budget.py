"""Query, token and money budgets, checked *before* anything is sent."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

from bbzo.errors import BudgetExceeded, InputError


@dataclass
class Budget:
    """Limits on what a run may spend. ``None`` means unlimited.

    ``reserve`` is called before a batch goes out and refuses it whole if it would cross a
    limit, so a limit is never exceeded. Tokens and cost are usually known only after a reply;
    callers reserve an upper bound (prompt tokens + max_tokens) and settle with ``settle``.

    Args:
        max_queries: most objective evaluations / model queries (``Request.queries``: a classify
            request of n inputs is n, any other request one).
        max_tokens: most tokens (prompt + completion) over all requests.
        max_cost: most money, in US dollars.
    """

    max_queries: int | None = None
    max_tokens: int | None = None
    max_cost: float | None = None
    queries: int = 0
    tokens: int = 0
    cost: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("max_queries", "max_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) != value or value <= 0):
                raise InputError(f"Budget {name} must be a positive integer or None, got {value!r}")
        if self.max_cost is not None and not (math.isfinite(self.max_cost) and self.max_cost > 0):
            raise InputError(f"Budget max_cost must be a positive number of dollars, got "
                             f"{self.max_cost!r}")

    @property
    def remaining_queries(self) -> int | None:
        """Queries still allowed, or None when unlimited."""
        return None if self.max_queries is None else self.max_queries - self.queries

    def can_afford(self, queries: int = 0, tokens: int = 0, cost: float = 0.0) -> bool:
        """Whether spending this much more stays within every limit."""
        return not self._overrun(queries, tokens, cost)

    def reserve(self, queries: int = 0, tokens: int = 0, cost: float = 0.0) -> None:
        """Spend ``queries``/``tokens``/``cost`` now, or raise ``BudgetExceeded`` spending none."""
        with self._lock:
            over = self._overrun(queries, tokens, cost)
            if over:
                raise BudgetExceeded(over, nqueries=self.queries)
            self.queries += queries
            self.tokens += tokens
            self.cost += cost

    def settle(self, tokens: int = 0, cost: float = 0.0) -> None:
        """Correct a reservation once the true usage is known (arguments may be negative)."""
        with self._lock:
            self.tokens += tokens
            self.cost += cost

    def _overrun(self, queries: int, tokens: int, cost: float) -> str | None:
        if self.max_queries is not None and self.queries + queries > self.max_queries:
            return (f"query budget exhausted: {self.queries} of {self.max_queries} used, "
                    f"next batch needs {queries}")
        if self.max_tokens is not None and self.tokens + tokens > self.max_tokens:
            return (f"token budget exhausted: {self.tokens} of {self.max_tokens} used, "
                    f"next batch needs {tokens}")
        if self.max_cost is not None and self.cost + cost > self.max_cost + 1e-12:
            return (f"cost budget exhausted: ${self.cost:.4f} of ${self.max_cost:.4f} used, "
                    f"next batch needs ${cost:.4f}")
        return None


def as_budget(budget: Budget | int | None) -> Budget:
    """Accept a ``Budget``, a plain query count, or None (unlimited)."""
    if budget is None:
        return Budget()
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or int(budget) != budget:
        raise InputError(f"budget must be a Budget or a positive integer number of queries, "
                         f"got {budget!r}")
    return Budget(max_queries=int(budget))
