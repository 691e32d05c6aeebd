"""Query layer: the one road every request takes to a target (ledger, budget, limits, retries).

``Request``, ``Response`` and ``Usage`` live in ``bbzo.blackbox.protocol`` (the bottom module
that targets and the query layer both import) and are re-exported here. ``LayerObjective`` /
``as_objective`` turn a layer into the engine's batched objective (rows sent as dense requests).
"""

from bbzo.blackbox.protocol import Request, Response, Usage, error_for_status, parse_retry_after
from bbzo.blackbox.query.layer import LayerStats, QueryLayer
from bbzo.blackbox.query.ledger import Ledger, LedgerSummary
from bbzo.blackbox.query.limits import RateLimiter, RateLimits
from bbzo.blackbox.query.objective import LayerObjective, as_objective
from bbzo.blackbox.query.pricing import Price, PriceTable
from bbzo.blackbox.query.retry import RetryPolicy

__all__ = [
    "LayerObjective", "LayerStats", "Ledger", "LedgerSummary", "Price", "PriceTable",
    "QueryLayer", "RateLimiter", "RateLimits", "Request", "Response", "RetryPolicy", "Usage",
    "as_objective", "error_for_status", "parse_retry_after",
]
