"""CMA-ES from the ``cma`` package (pycma), its queries going through the engine's ``Objective``.

pycma is an optional dependency (``pip install 'bbzo[cma]'``); it is imported only when a CMA
method runs. Every population is one batched call of the objective, so queries are counted,
budgeted and (through the query-layer adapter) ledgered like every other method's. When the
budget cannot pay for a whole population, the affordable part is evaluated and the run ends:
the budget is never exceeded. When pycma stops on its own criteria (tolerances, stagnation)
before the budget is spent, it restarts from the best point with twice the population (IPOP).

| method | covariance | memory | cost per generation |
| --- | --- | --- | --- |
| ``cma-es`` | full d × d | d² | O(d²) (+ an eigendecomposition every few generations) |
| ``sep-cma-es`` | diagonal (``CMA_diagonal``) | d | O(λ d) |
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bbzo.blackbox.zo.objective import Objective
from bbzo.errors import InputError

CMA_METHODS = ("cma-es", "sep-cma-es")
MISSING_CMA = ("method {method!r} needs the optional package cma (pycma): "
               "pip install 'bbzo[cma]' (or pip install cma)")


def load_cma(method: str) -> Any:
    """The ``cma`` module, or an ``InputError`` with one line saying how to install it."""
    try:
        import cma
    except ImportError:
        raise InputError(MISSING_CMA.format(method=method)) from None
    return cma


@dataclass
class CMASettings:
    """What a CMA run is given (``minimize``'s ``options`` for the CMA methods).

    Attributes:
        sigma0: initial step size (standard deviation per coordinate); None: 0.3·max(1, ‖x0‖∞).
        popsize: population λ; None: pycma's 4 + ⌊3 ln d⌋.
        restarts: whether to restart (IPOP, from the best point) when pycma stops early.
    """

    sigma0: float | None = None
    popsize: int | None = None
    restarts: bool = True

    @classmethod
    def from_options(cls, options: dict | None) -> CMASettings:
        options = dict(options or {})
        unknown = sorted(set(options) - {"sigma0", "popsize", "restarts"})
        if unknown:
            raise InputError(f"unknown option(s) {', '.join(unknown)} for a CMA method; "
                             f"choose from sigma0, popsize, restarts")
        settings = cls(**options)
        if settings.sigma0 is not None and not (isinstance(settings.sigma0, int | float)
                                                and settings.sigma0 > 0):
            raise InputError(f"options['sigma0'] must be a positive number, got "
                             f"{settings.sigma0!r}")
        if settings.popsize is not None and not (isinstance(settings.popsize, int)
                                                 and settings.popsize >= 2):
            raise InputError(f"options['popsize'] must be an integer >= 2, got "
                             f"{settings.popsize!r}")
        return settings


def run_cma(objective: Objective, x: torch.Tensor, *, method: str, settings: CMASettings,
            seed: int, maxiter: int | None,
            should_stop: Callable[[dict], str | None]) -> tuple[int, str]:
    """Run CMA-ES on ``objective`` from ``x`` (d,) until the budget, ``maxiter`` or
    ``should_stop`` ends it.

    Args:
        method: "cma-es" (full covariance) or "sep-cma-es" (diagonal).
        should_stop: called with each generation's history dict (``nit``, ``nqueries``,
            ``loss`` = median of the population, ``best``, ``lr`` = pycma's σ); returns the
            stop message, or None to go on.

    Returns:
        (generations completed, stop message). ``BudgetExceeded`` is never raised by it.
    """
    cma = load_cma(method)
    d = x.numel()
    x0 = x.detach().cpu().double().numpy()
    sigma0 = settings.sigma0 or 0.3 * max(1.0, float(np.abs(x0).max()))
    popsize = settings.popsize or 4 + int(3 * math.log(d))
    start, nit, restarts = x0, 0, 0
    budget = objective.budget
    while True:
        opts = {"seed": int(seed) + 1 + restarts, "popsize": popsize, "verbose": -9,
                "CMA_diagonal": method == "sep-cma-es", "tolstagnation": 10**9}
        es = cma.CMAEvolutionStrategy(start, sigma0, opts)
        while not es.stop():
            if maxiter is not None and nit >= maxiter:
                return nit, f"maximum number of iterations ({maxiter}) reached"
            left = budget.remaining_queries
            if left is not None and left < 1:
                return nit, budget_message(budget)
            candidates = es.ask()
            if left is not None and left < len(candidates):  # the affordable part, then stop
                objective(torch.as_tensor(np.array(candidates[:left]), dtype=x.dtype,
                                          device=x.device))
                return nit, budget_message(budget)
            points = torch.as_tensor(np.array(candidates), dtype=x.dtype, device=x.device)
            values = objective(points)
            es.tell(candidates, values.detach().cpu().double().tolist())
            nit += 1
            message = should_stop({"nit": nit, "nqueries": objective.nqueries,
                                   "loss": float(values.median()), "best": objective.best_fun,
                                   "lr": float(es.sigma)})
            if message is not None:
                return nit, message
        reason = ", ".join(f"{k}={v}" for k, v in es.stop().items())
        if not settings.restarts:
            return nit, f"cma stopped: {reason}"
        start = objective.best_x.detach().cpu().double().numpy()
        popsize, restarts = 2 * popsize, restarts + 1


def budget_message(budget: Any) -> str:
    """The stop message when the query budget is spent."""
    return f"query budget exhausted: {budget.queries} of {budget.max_queries} used"
