"""Argument checks shared by every part of bbzo: each raises ``InputError`` with one line that
names the argument, what it must be and what it got."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from bbzo.errors import InputError


def int_at_least(name: str, value: Any, minimum: int = 1) -> int:
    """An integer (Python or numpy, not bool) ≥ ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise InputError(f"{name} must be {what}, got {value!r}")
    return int(value)


def _number(name: str, value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise InputError(f"{name} must be {what}, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be {what}, got {value!r}") from None


def positive(name: str, value: Any) -> float:
    """A finite number > 0."""
    number = _number(name, value, "a positive finite number")
    if not 0 < number < math.inf:
        raise InputError(f"{name} must be a positive finite number, got {value!r}")
    return number


def non_negative(name: str, value: Any) -> float:
    """A finite number ≥ 0."""
    number = _number(name, value, "a finite number >= 0")
    if not 0 <= number < math.inf:
        raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


def fraction(name: str, value: Any) -> float:
    """A number in (0, 1]."""
    number = positive(name, value)
    if number > 1.0:
        raise InputError(f"{name} must be a fraction in (0, 1], got {value!r}")
    return number


def unit_interval(name: str, value: Any) -> float:
    """A number in [0, 1) (decay rates such as momentum β)."""
    number = _number(name, value, "a number in [0, 1)")
    if not 0.0 <= number < 1.0:
        raise InputError(f"{name} must be in [0, 1), got {value!r}")
    return number


def one_of(name: str, value: Any, options: Sequence[str]) -> str:
    """One of the allowed strings."""
    if value not in options:
        raise InputError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value
