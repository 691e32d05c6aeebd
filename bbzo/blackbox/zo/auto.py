"""Rules that choose for the user: ZO-SGD's directions per step from d and the budget, and the
method ``minimize(method="auto")`` runs from d, the budget and noise.

The rules come from ``bench/peers.py`` (side-by-side runs at equal query budgets).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from bbzo.blackbox.zo.estimators import RGE
from bbzo.blackbox.zo.objective import Objective
from bbzo.blackbox.zo.step_size import repeat_differs
from bbzo.errors import InputError

# Fewest steps the default q leaves room for in the budget.
MIN_STEPS = 100
# Largest d for the full covariance (d² memory and O(d²)–O(d³) work per generation).
FULL_COVARIANCE_MAX_D = 1000
# Queries per d² from which CMA-ES is chosen over ZO-SGD on noise-free problems.
CMA_MIN_BUDGET_PER_D2 = 1
# Largest d for Powell's method (one query at a time, a d × d direction set).
POWELL_MAX_D = 50
# On noisy values CMA-ES gets a population of budget / NOISY_GENERATIONS (at least pycma's
# default): a large population averages the noise out of the ranking (measured at d = 1,000,
# 40k queries, sep-CMA-ES: relative gap 6.2e-2 with pycma's λ = 24, 1.3e-2 with λ = 96,
# 1.2e-2 with 200, 8.2e-2 with 400).
NOISY_GENERATIONS = 300
# From this d on, ZO-SGD under "auto" takes forward differences with a small radius: q + 1
# queries a step instead of 2q, and a bias (μ/2)·uᵀHu small enough not to set a floor
# (measured, bench/peers.py, relative gaps central → forward μ = 1e-7: d = 1,000, 40k
# queries: quadratic 5.4e-3 → 2.1e-3, Rosenbrock 3.902e-3 → 3.902e-3, logistic 7.9e-9 →
# 9.7e-12 (μ = 1e-5: 7.4e-7); d = 10,000, 20k queries, μ = 1e-5: quadratic 0.18 → 0.085,
# Rosenbrock 0.46 → 0.17, logistic 0.25 → 0.093). Below it central differences stay.
FORWARD_MIN_D = 1000
FORWARD_MU = 1e-7


def default_q(d: int, budget: int | None) -> int:
    """Directions per RGE step: √d within [10, 100], fewer when the budget would not pay for
    ``MIN_STEPS`` steps (at 2q + 1 queries each).

    With the secant step size, queries per unit of progress barely depend on q while q ≪ d
    (measured: d = 1,000, q = 10 and 50 reach the same gap), so a larger q for a large d
    only cuts the per-step overhead; a small budget needs steps more than directions.

    Args:
        d: dimension.
        budget: queries left, None when unlimited.
    """
    q = min(max(10, round(math.sqrt(d))), 100)
    if budget is not None:
        q = min(q, max(1, budget // (2 * MIN_STEPS)))
    return q


def choose_method(d: int, budget: int | None, noisy: bool, cma_available: bool) -> str:
    """The method "auto" runs (measured side by side in ``bench/peers.py``).

    - noisy values: CMA-ES (differences of noisy values, ZO-SGD's and Powell's line searches',
      drown in the noise) with the full covariance where it can learn it (d ≤
      ``FULL_COVARIANCE_MAX_D`` and a budget of at least ``CMA_MIN_BUDGET_PER_D2``·d²),
      separable otherwise;
    - noise-free, d ≤ ``POWELL_MAX_D``: Powell's method (superlinear on smooth functions);
    - noise-free, d ≤ ``FULL_COVARIANCE_MAX_D`` and a budget of at least
      ``CMA_MIN_BUDGET_PER_D2``·d² queries (or none): CMA-ES, whose covariance has then had the
      queries to learn the problem's conditioning (measured at d = 100: CMA-ES ahead at 2·d²,
      ZO-SGD ahead at 0.3·d²);
    - otherwise ZO-SGD with the secant step size (queries per unit of progress grow like d);
    - without ``cma``: ZO-SGD where CMA-ES would run.

    Args:
        d: dimension.
        budget: queries left (None: unlimited).
        noisy: two evaluations of the same point differed.
        cma_available: the ``cma`` package can be imported.
    """
    full_covariance = d <= FULL_COVARIANCE_MAX_D and (
        budget is None or budget >= CMA_MIN_BUDGET_PER_D2 * d * d)
    if noisy:
        if not cma_available:
            return "zo-sgd"
        return "cma-es" if full_covariance else "sep-cma-es"
    if d <= POWELL_MAX_D:
        return "powell"
    if cma_available and full_covariance:
        return "cma-es"
    return "zo-sgd"


def noisy_popsize(d: int, budget: int | None) -> int:
    """CMA-ES's population on noisy values: budget / ``NOISY_GENERATIONS``, at least pycma's
    default 4 + ⌊3 ln d⌋ (the default when the budget is unlimited)."""
    popsize = 4 + int(3 * math.log(d))
    return popsize if budget is None else max(popsize, budget // NOISY_GENERATIONS)


def choose_for(objective: Objective, x: torch.Tensor, *, zo_arguments: dict[str, Any],
               estimator: Any, modules: Any, options: dict | None) -> tuple[str, dict]:
    """``choose_method`` for this objective and start point, and the settings of the chosen
    method as ``minimize`` keywords (``options`` with a CMA population for noisy values,
    ``estimator`` with forward differences for ZO-SGD from d = ``FORWARD_MIN_D``, else none);
    refuses method-specific settings (they would silently not apply to the other kind of
    method)."""
    given = [k for k, v in zo_arguments.items() if v is not None]
    given += ["estimator"] * (estimator != "rge")
    given += ["modules"] * bool(modules if isinstance(modules, Sequence) else True)
    given += ["options"] * bool(options)
    if given:
        raise InputError(f"method='auto' chooses every setting itself; {', '.join(given)} "
                         f"need a named method (e.g. 'zo-sgd' or 'cma-es')")
    cma_available = importlib.util.find_spec("cma") is not None
    if not cma_available:
        warnings.warn("method='auto' runs zo-sgd: the optional package cma is missing "
                      "(pip install 'bbzo[cma]' for CMA-ES)", stacklevel=3)
    left = objective.budget.remaining_queries
    noisy = (left is None or left >= 2) and repeat_differs(objective, x)
    left = objective.budget.remaining_queries
    d = x.numel()
    method = choose_method(d, left, noisy, cma_available)
    if method in ("cma-es", "sep-cma-es") and noisy:
        return method, {"options": {"popsize": noisy_popsize(d, left)}}
    if method == "zo-sgd" and not noisy and d >= FORWARD_MIN_D:
        return method, {"estimator": RGE(q=default_q(d, left), mu=FORWARD_MU,
                                         difference="forward")}
    return method, {}
