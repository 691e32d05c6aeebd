"""``minimize`` and ``estimate_gradient``: the engine's facade, in the shape of scipy.optimize."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from bbzo.blackbox.budget import Budget
from bbzo.blackbox.zo.estimators import Estimator, make_estimator
from bbzo.blackbox.zo.objective import Objective, as_vector
from bbzo.blackbox.zo.transforms import Context, Module, Probe, chain
from bbzo.blackbox.zo.update import method_tail
from bbzo.checks import int_at_least, positive
from bbzo.errors import BudgetExceeded, InputError

# Automatic step size: grow by this factor on every new best iterate, halve on a blow-up.
LR_GROWTH = 1.01
LR_BACKOFF = 0.5


@dataclass
class OptimizeResult:
    """What ``minimize`` returns (scipy's field names where they exist).

    Attributes:
        x: best point evaluated, in the caller's array type.
        fun: objective value at ``x`` (a measured value, not an estimate).
        nqueries: objective evaluations spent (rows of all batches); also ``nfev``.
        nit: iterations completed.
        history: one dict per iteration: ``nit``, ``nqueries``, ``loss`` (estimate of f at the
            iterate, free from the probe values), ``best`` (best measured value so far), ``lr``.
        success: False only when the run stopped on an error-like condition.
        message: why it stopped.
        lr: the step size in use at the end (interesting when it was chosen automatically).
    """

    x: Any
    fun: float
    nqueries: int
    nit: int
    history: list[dict] = field(default_factory=list)
    success: bool = True
    message: str = ""
    lr: float = 0.0

    @property
    def nfev(self) -> int:
        return self.nqueries

    def __repr__(self) -> str:
        return (f"OptimizeResult(fun={self.fun:.6g}, nqueries={self.nqueries}, nit={self.nit}, "
                f"success={self.success}, message={self.message!r})")


def _modules(method: str, modules: Module | Sequence[Module]) -> Module:
    if isinstance(modules, Module):
        modules = (modules,)
    return chain(*modules, *method_tail(method))


def _probe_loss(probe: Probe) -> torch.Tensor:
    """f(x) when measured, else the mean of the probe values (f(x) + O(μ²) for central pairs)."""
    if probe.f_center is not None:
        return probe.f_center
    values = probe.f_plus if probe.f_minus is None else torch.cat([probe.f_plus, probe.f_minus])
    return values.mean()


def _line_search(objective: Objective, x: torch.Tensor, direction: torch.Tensor,
                 f0: float, max_trials: int = 30) -> float:
    """Largest t = t0 / 2^k with f(x − t·direction) < f0, starting where the step moves x by
    max(1, ‖x‖). Costs at most ``max_trials`` queries. Returns 0.0 when nothing decreases."""
    norm = float(direction.norm())
    if norm == 0.0:
        return 0.0
    t = max(1.0, float(x.norm())) / norm
    for _ in range(max_trials):
        if float(objective((x - t * direction)[None])[0]) < f0:
            return t
        t *= 0.5
    return 0.0


def minimize(fun: Callable[[Any], Any], x0: Any, *, method: str = "zo-sgd",
             estimator: str | Estimator = "rge", q: int | None = None, mu: float | None = None,
             lr: float | None = None, modules: Module | Sequence[Module] = (),
             budget: Budget | int | None = None, maxiter: int | None = None, seed: int = 0,
             callback: Callable[[dict], bool | None] | None = None) -> OptimizeResult:
    """Minimise a black-box function from queries alone.

    Args:
        fun: batched objective, ``fun(X)`` with X of shape (n, d) → shape (n,). Gets numpy
            arrays when ``x0`` is numpy (or a list), torch tensors when ``x0`` is a tensor.
        x0: starting point, shape (d,).
        method: "zo-sgd", "zo-momentum", "zo-sign-sgd" or "zo-adam" (see ``update``).
        estimator: "rge", "cge", "rank" or an ``Estimator`` instance.
        q: directions per step (RGE) or points ranked per step (rank). Default 10.
        mu: smoothing radius; default 1e-3 (RGE, rank), 1e-4 (CGE).
        lr: step size. None chooses it automatically: a backtracking line search along the
            first estimate (at most 30 queries) sets it; it then grows 1% with every new best
            loss estimate and is halved, returning to the best iterate, whenever the loss
            estimate rises far above the best one (a "bold driver" rule). A number fixes it.
        modules: a module or a sequence of modules (``bbzo.blackbox.zo.modules``), applied
            before the method's update rule.
        budget: a ``Budget`` or a maximum number of queries; never exceeded.
        maxiter: most iterations. With neither ``budget`` nor ``maxiter``, 1000 iterations.
        seed: seeds every random draw; the same seed gives the same result.
        callback: called with each iteration's history dict; return True to stop.

    Returns:
        An ``OptimizeResult``.
    """
    x, numpy_io = as_vector(x0)
    objective = Objective(fun, x, numpy_io=numpy_io, budget=budget)
    est = make_estimator(estimator, q=q, mu=mu)
    module = _modules(method, modules)
    lr_value = None if lr is None else positive("lr", lr)
    auto_lr = lr_value is None
    if maxiter is None and objective.budget.max_queries is None:
        maxiter = 1000
    if maxiter is not None:
        maxiter = int_at_least("maxiter", maxiter)
    if callback is not None and not callable(callback):
        raise InputError("callback must be callable as callback(info_dict)")

    if auto_lr and getattr(est, "ranker", None) is not None:
        raise InputError("with an external ranker there are no loss values to tune the step "
                         "size on: pass a fixed lr")

    generator = torch.Generator(device=x.device).manual_seed(int(seed))
    state = module.init(x)
    history: list[dict] = []
    message, nit = "", 0
    best_iterate = (x.clone(), float("inf"), state)
    f_start: float | None = None
    try:
        while maxiter is None or nit < maxiter:
            ctx = Context(x=x, step=nit, generator=generator, mu=est.mu)
            g, new_state, probe = est.estimate(objective, x, module, state, ctx)
            loss = float(_probe_loss(probe))
            if f_start is None:
                f_start = loss
            blew_up = False
            if auto_lr:
                if lr_value is None:
                    lr_value = 0.5 * _line_search(objective, x, g, loss) or 1e-3
                if loss < best_iterate[1]:
                    best_iterate = (x.clone(), loss, state)
                    lr_value *= LR_GROWTH
                else:
                    blew_up = loss > best_iterate[1] + 0.25 * abs(f_start - best_iterate[1])
            if blew_up:  # back to the best iterate with half the step
                x, state = best_iterate[0].clone(), best_iterate[2]
                lr_value *= LR_BACKOFF
            else:
                state = new_state
                x = x - lr_value * g
            nit += 1
            record = {"nit": nit, "nqueries": objective.nqueries, "loss": loss,
                      "best": objective.best_fun, "lr": lr_value}
            history.append(record)
            if callback is not None and callback(dict(record)):
                message = "stopped by callback"
                break
        else:
            message = f"maximum number of iterations ({maxiter}) reached"
    except BudgetExceeded as err:
        message = str(err)
    if objective.nqueries == 0 and nit > 0:  # an external ranker saw every point
        return OptimizeResult(x=objective.export(x), fun=float("nan"), nqueries=0, nit=nit,
                              history=history, message=message + "; no loss values were measured",
                              lr=float(lr_value or 0.0))
    if objective.best_x is None:
        raise BudgetExceeded("budget too small for a single estimate: raise it or lower q",
                             nqueries=objective.nqueries)
    return OptimizeResult(x=objective.export(objective.best_x), fun=objective.best_fun,
                          nqueries=objective.nqueries, nit=nit, history=history, success=True,
                          message=message, lr=float(lr_value or 0.0))


def estimate_gradient(fun: Callable[[Any], Any], x: Any, *, estimator: str | Estimator = "rge",
                      q: int | None = None, mu: float | None = None,
                      modules: Module | Sequence[Module] = (), seed: int = 0) -> tuple[Any, int]:
    """One gradient estimate at ``x``.

    Args:
        fun: batched objective ``fun(X)`` (n, d) → (n,).
        x: point, shape (d,), tensor or array.
        estimator, q, mu, modules: as in ``minimize``.
        seed: seeds the directions.

    Returns:
        ``(g, nqueries)``: the (d,) estimate in the caller's array type and the queries spent.
    """
    x_t, numpy_io = as_vector(x, name="x")
    objective = Objective(fun, x_t, numpy_io=numpy_io)
    est = make_estimator(estimator, q=q, mu=mu)
    module = _modules("zo-sgd", modules)
    generator = torch.Generator(device=x_t.device).manual_seed(int(seed))
    ctx = Context(x=x_t, step=0, generator=generator, mu=est.mu)
    g, _, _ = est.estimate(objective, x_t, module, module.init(x_t), ctx)
    return objective.export(g), objective.nqueries
