"""The shared black-box engine: budgets, the ZO optimiser, (later) targets and the query layer."""

from bbzo.blackbox.budget import Budget

__all__ = ["Budget"]
