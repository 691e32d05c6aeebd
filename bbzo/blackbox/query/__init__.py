"""Query layer: the one road every request takes to a target (ledger, budget, limits, retries).

Names are exported lazily (PEP 562): targets import ``query.request`` while the layer imports
the target protocol, so importing everything here eagerly would be circular.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "QueryLayer": "layer", "LayerStats": "layer", "Ledger": "ledger",
    "LedgerSummary": "ledger", "RateLimiter": "limits", "RateLimits": "limits",
    "Price": "pricing", "PriceTable": "pricing", "Request": "request", "Response": "request",
    "Usage": "request", "RetryPolicy": "retry", "error_for_status": "retry",
    "parse_retry_after": "retry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
