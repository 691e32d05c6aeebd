"""Powell's conjugate-direction search from scipy, its queries going through the engine's
``Objective`` (counted, budgeted, ledgered like every other method's).

Powell's method builds conjugate directions with line searches along them: on a smooth,
noise-free function of a few dozen variables it converges superlinearly where random
directions (ZO-SGD) or sampling (CMA-ES) converge linearly. It queries one point at a time (no
batching) and keeps a d × d direction set, so it suits small d; noise breaks its line searches.
When a run ends before the budget, it restarts from the best point (a fresh direction set),
until a restart no longer improves.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from bbzo.blackbox.zo.objective import Objective


class _Stop(Exception):
    """Raised from scipy's callback to end the run."""


def run_powell(objective: Objective, x: torch.Tensor, *, maxiter: int | None,
               should_stop: Callable[[dict], str | None]) -> tuple[int, str]:
    """Run Powell's method on ``objective`` from ``x`` (d,) until the budget, ``maxiter``,
    ``should_stop`` or convergence ends it. ``BudgetExceeded`` propagates to the caller.

    Args:
        should_stop: called with each iteration's history dict (``nit``, ``nqueries``,
            ``loss`` = f at the iterate, ``best``, ``lr`` = length of the last move); returns
            the stop message, or None to go on.

    Returns:
        (iterations completed, stop message).
    """
    from scipy.optimize import minimize as scipy_minimize  # slow to import

    nit = 0
    start = x.detach().cpu().double().numpy()
    last = {"x": start}

    def fun(point: np.ndarray) -> float:
        row = torch.as_tensor(point, dtype=x.dtype, device=x.device)[None]
        return float(objective(row)[0])

    def callback(point: np.ndarray) -> None:
        nonlocal nit, message
        nit += 1
        step = float(np.linalg.norm(point - last["x"]))
        last["x"] = point.copy()
        message = should_stop({"nit": nit, "nqueries": objective.nqueries,
                               "loss": objective.best_fun, "best": objective.best_fun,
                               "lr": step})
        if message is None and maxiter is not None and nit >= maxiter:
            message = f"maximum number of iterations ({maxiter}) reached"
        if message is not None:
            raise _Stop

    message: str | None = None
    while True:
        before = objective.best_fun
        try:
            scipy_minimize(fun, start, method="Powell", callback=callback,
                           options={"maxfev": 10**9})  # scipy's tolerances; restarts refine
        except _Stop:
            return nit, message or ""
        if not objective.best_fun < before:
            return nit, "converged: a restart of Powell's method found no better point"
        start = objective.best_x.detach().cpu().double().numpy()
