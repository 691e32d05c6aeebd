"""What a request costs: a price table in US dollars per million tokens, per model.

The defaults are example prices for a few well-known OpenAI models, copied by hand at the time
of writing; they change, so check your provider and override them (``PriceTable(prices)`` or
``PriceTable.from_json(path)``). A model name matches its exact entry or else the longest entry
it starts with, so ``gpt-4o-mini-2024-07-18`` is priced as ``gpt-4o-mini``. An unknown model
costs 0 and is remembered in ``PriceTable.unknown`` (with one logged warning), so a run never
crashes on a missing price but its report can say the cost is not counted.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bbzo.blackbox.protocol import Usage
from bbzo.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Price:
    """US dollars per one million prompt and completion tokens."""

    prompt: float
    completion: float

    def __post_init__(self) -> None:
        for name in ("prompt", "completion"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise InputError(f"price {name} must be a non-negative number of dollars per "
                                 f"1M tokens, got {value!r}")


# Example prices (USD per 1M tokens), not authoritative: check your provider.
EXAMPLE_PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-3.5-turbo": Price(0.50, 1.50),
}


def _as_price(model: str, value: Price | Mapping | tuple | list) -> Price:
    if isinstance(value, Price):
        return value
    if isinstance(value, Mapping) and set(value) == {"prompt", "completion"}:
        return Price(value["prompt"], value["completion"])
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return Price(value[0], value[1])
    raise InputError(f"price for {model!r} must be {{\"prompt\": USD, \"completion\": USD}} per "
                     f"1M tokens, got {value!r}")


class PriceTable:
    """Prices per model; ``cost(model, usage)`` in US dollars.

    Args:
        prices: model name -> ``Price``, ``{"prompt": p, "completion": c}`` or ``(p, c)``, in
            USD per 1M tokens; these override the defaults.
        defaults: start from ``EXAMPLE_PRICES`` (True) or from an empty table.
    """

    def __init__(self, prices: Mapping | None = None, *, defaults: bool = True) -> None:
        self.prices: dict[str, Price] = dict(EXAMPLE_PRICES) if defaults else {}
        for model, value in (prices or {}).items():
            self.prices[str(model)] = _as_price(str(model), value)
        self.unknown: set[str] = set()

    @classmethod
    def from_json(cls, path: str | Path, *, defaults: bool = True) -> PriceTable:
        """Read ``{"model": {"prompt": USD, "completion": USD}, ...}`` (per 1M tokens)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read price file {path}: {err}") from None
        if not isinstance(data, dict):
            raise InputError(f"price file {path} must hold a JSON object of model -> price")
        return cls(data, defaults=defaults)

    def price(self, model: str) -> Price | None:
        """The price of ``model``: its exact entry, else the longest entry it starts with."""
        if model in self.prices:
            return self.prices[model]
        prefixes = [name for name in self.prices if model.startswith(name)]
        return self.prices[max(prefixes, key=len)] if prefixes else None

    def cost(self, model: str, usage: Usage) -> float:
        """Dollars for ``usage`` on ``model``; 0.0 (noted in ``unknown``) when unpriced."""
        price = self.price(model)
        if price is None:
            if model not in self.unknown:
                log.warning("no price for model %r: its cost is counted as $0; add it with a "
                            "price file", model)
                self.unknown.add(model)
            return 0.0
        return (usage.prompt_tokens * price.prompt
                + usage.completion_tokens * price.completion) / 1e6
