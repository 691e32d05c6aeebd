"""``minimize`` and ``estimate_gradient``: the engine's facade, in the shape of scipy.optimize."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from bbzo.blackbox.budget import Budget
from bbzo.blackbox.zo.auto import choose_for, default_q
from bbzo.blackbox.zo.cma_es import CMA_METHODS, CMASettings, run_cma
from bbzo.blackbox.zo.direct_search import run_powell
from bbzo.blackbox.zo.estimators import Estimator, make_estimator
from bbzo.blackbox.zo.objective import Objective, as_points, as_vector
from bbzo.blackbox.zo.step_size import (
    MIN_BUDGET,
    MeasureCenter,
    SecantStep,
    repeat_differs,
    secant_applies,
)
from bbzo.blackbox.zo.transforms import Chain, Context, Module, chain, probe_value
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
        success: True only when the run met ``target`` or converged (``ftol``); False when
            the budget, ``maxiter`` or the callback stopped it first.
        message: why it stopped.
        lr: the step size in use at the end (interesting when it was chosen automatically);
            for the CMA methods pycma's σ.
        method: the method that ran ("zo-sgd", …, "cma-es", "sep-cma-es", "powell"; what
            "auto" chose).
    """

    x: Any
    fun: float
    nqueries: int
    nit: int
    history: list[dict] = field(default_factory=list)
    success: bool = True
    message: str = ""
    lr: float = 0.0
    method: str = "zo-sgd"

    @property
    def nfev(self) -> int:
        return self.nqueries

    def __repr__(self) -> str:
        return (f"OptimizeResult(method={self.method!r}, fun={self.fun:.6g}, "
                f"nqueries={self.nqueries}, nit={self.nit}, success={self.success}, "
                f"message={self.message!r})")


def _modules(method: str, modules: Module | Sequence[Module]) -> Chain:
    """The chain of ``modules`` followed by the method's update rule (one update rule at most)."""
    if isinstance(modules, Module):
        modules = (modules,)
    tail = method_tail(method)
    given = chain(*modules)
    if tail and given.is_update_rule:
        raise InputError(f"method={method!r} adds {tail[0]!r} and modules hold another update "
                         f"rule; use method='zo-sgd' or drop the rule from modules")
    return chain(given, *tail)


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


class _Stopping:
    """The stop tests every method shares: callback, target, ftol, and the history they read."""

    def __init__(self, objective: Objective, callback: Callable[[dict], bool | None] | None,
                 target: float | None, ftol: float | None, window: int) -> None:
        if callback is not None and not callable(callback):
            raise InputError("callback must be callable as callback(info_dict)")
        self.objective = objective
        self.callback = callback
        self.target = None if target is None else float(target)
        self.ftol = None if ftol is None else positive("ftol", ftol)
        self.window = int_at_least("window", window)
        self.history: list[dict] = []
        self.success = False

    def __call__(self, record: dict) -> str | None:
        """Record one iteration; the stop message, or None to go on."""
        self.history.append(record)
        best = self.objective.best_fun
        if self.callback is not None and self.callback(dict(record)):
            return "stopped by callback"
        if self.target is not None and best <= self.target:
            self.success = True
            return f"target reached: {best:.6g} <= {self.target:.6g}"
        if self.ftol is not None and len(self.history) > self.window:
            before = self.history[-1 - self.window]["best"]
            if before - best < self.ftol * max(1.0, abs(best)):
                self.success = True
                return (f"converged: best value improved by less than ftol={self.ftol:g} "
                        f"(relative) over {self.window} iterations")
        return None


def minimize(fun: Callable[[Any], Any], x0: Any, *, method: str = "zo-sgd",
             estimator: str | Estimator = "rge", q: int | None = None, mu: float | None = None,
             lr: float | None = None, modules: Module | Sequence[Module] = (),
             budget: Budget | int | None = None, maxiter: int | None = None, seed: int = 0,
             callback: Callable[[dict], bool | None] | None = None,
             target: float | None = None, ftol: float | None = None,
             window: int = 20, options: dict | None = None) -> OptimizeResult:
    """Minimise a black-box function from queries alone.

    Args:
        fun: batched objective, ``fun(X)`` with X of shape (n, d) → shape (n,). Gets numpy
            arrays when ``x0`` is numpy (or a list), torch tensors when ``x0`` is a tensor.
        x0: starting point, shape (d,).
        method: "zo-sgd", "zo-momentum", "zo-sign-sgd" or "zo-adam" (see ``update``);
            "cma-es" or "sep-cma-es" (CMA-ES through the optional ``cma`` package, see
            ``cma_es``); "powell" (scipy's Powell, one point per query, see
            ``direct_search``); "auto" picks one from d, the budget and noise (see ``auto``).
        estimator: "rge", "cge", "rank" or an ``Estimator`` instance.
        q: directions per step (RGE) or points ranked per step (rank). Default for "rge":
            chosen from d and the budget (``default_q``); 10 for "rank". Refused with "cge"
            and, like ``mu``, with an estimator instance (set them there).
        mu: smoothing radius; default 1e-3 (RGE, rank), 1e-4 (CGE).
        lr: step size. None chooses it automatically: a backtracking line search along the
            first estimate (at most 30 queries) sets it. For noise-free values (two queries
            at x0 agree; checked when at least 100 queries are left) and an estimate built from
            difference scalars only (RGE or CGE, method "zo-sgd", modules that only shape
            directions, like ``hizoo``) it then follows the curvature measured along each step
            (``step_size.SecantStep``; f(x) is measured each step, one query); otherwise it
            grows 1% with every new best loss estimate (a "bold driver" rule). Either way it
            is halved, returning to the best iterate, whenever the loss rises far above the
            best one. A number fixes it.
        modules: a module or a sequence of modules (``bbzo.blackbox.zo.modules``), applied
            before the method's update rule; an update rule here needs method "zo-sgd".
        budget: a ``Budget`` or a maximum number of queries; never exceeded.
        maxiter: most iterations (generations for CMA). With neither ``budget`` nor
            ``maxiter``, 1000 iterations.
        seed: seeds every random draw; the same seed gives the same result.
        callback: called with each iteration's history dict; return True to stop.
        target: stop, successfully, once a measured value is <= target.
        ftol: convergence test: stop, successfully, once the best measured value improved by
            less than ftol·max(1, |best|) over the last ``window`` iterations. None: no test.
        window: iterations the ``ftol`` test looks back over.
        options: settings of the CMA methods (``sigma0``, ``popsize``, ``restarts``; see
            ``cma_es.CMASettings``); refused with the ZO methods.

    Returns:
        An ``OptimizeResult``; ``success`` says whether ``target`` or ``ftol`` stopped it,
        ``method`` which method ran.
    """
    x, numpy_io = as_vector(x0)
    objective = Objective(fun, x, numpy_io=numpy_io, budget=budget)
    if maxiter is None and objective.budget.max_queries is None:
        maxiter = 1000
    if maxiter is not None:
        maxiter = int_at_least("maxiter", maxiter)
    stopping = _Stopping(objective, callback, target, ftol, window)
    zo_arguments = {"q": q, "mu": mu, "lr": lr}
    if method == "auto":
        method, chosen = choose_for(objective, x, zo_arguments=zo_arguments,
                                    estimator=estimator, modules=modules, options=options)
        options, estimator = chosen.get("options"), chosen.get("estimator", estimator)
    if method in CMA_METHODS or method == "powell":
        given = [k for k, v in zo_arguments.items() if v is not None]
        given += ["estimator"] * (estimator != "rge") + ["modules"] * bool(modules)
        if given:
            raise InputError(f"{', '.join(given)} set the ZO estimator, which method={method!r} "
                             f"does not use: drop them (CMA settings go in options=)")
        try:
            if method == "powell":
                if options:
                    raise InputError("method='powell' takes no options")
                nit, message = run_powell(objective, x, maxiter=maxiter, should_stop=stopping)
            else:
                nit, message = run_cma(objective, x, method=method,
                                       settings=CMASettings.from_options(options), seed=seed,
                                       maxiter=maxiter, should_stop=stopping)
        except BudgetExceeded as err:  # Powell's next point, or a token or cost limit
            nit, message = len(stopping.history), str(err)
        lr_end = stopping.history[-1]["lr"] if stopping.history else 0.0
        return _result(objective, method, nit, stopping, message, lr_end, x)
    if options:
        raise InputError(f"options are settings of the CMA methods; method={method!r} takes "
                         f"its settings as keyword arguments (q, mu, lr, modules)")
    if q is None and estimator == "rge":
        q = default_q(x.numel(), objective.budget.remaining_queries)
    est = make_estimator(estimator, q=q, mu=mu)
    module = _modules(method, modules)
    lr_value = None if lr is None else positive("lr", lr)
    auto_lr = lr_value is None

    if auto_lr and getattr(est, "ranker", None) is not None:
        raise InputError("with an external ranker there are no loss values to tune the step "
                         "size on: pass a fixed lr")

    secant = None
    left = objective.budget.remaining_queries
    if (auto_lr and secant_applies(est, module) and (left is None or left >= MIN_BUDGET)
            and not repeat_differs(objective, x)):
        secant = SecantStep(est.scale)
        if not module.needs_center:
            module = chain(module, MeasureCenter())
    generator = torch.Generator(device=x.device).manual_seed(int(seed))
    state = module.init(x)
    message, nit = "", 0
    best_iterate = (x.clone(), float("inf"), state)
    f_start: float | None = None
    try:
        while maxiter is None or nit < maxiter:
            ctx = Context(x=x, step=nit, generator=generator, mu=est.mu)
            g, new_state, probe = est.estimate(objective, x, module, state, ctx)
            g, new_state = module.update(g, new_state, ctx)
            loss = float(probe_value(probe))
            if f_start is None:
                f_start = loss
            blew_up = False
            if auto_lr:
                if lr_value is None:
                    lr_value = 0.5 * _line_search(objective, x, g, loss) or 1e-3
                if secant is not None:
                    lr_value = secant.next(probe, est.mu, lr_value)
                if loss < best_iterate[1]:
                    best_iterate = (x.clone(), loss, state)
                    lr_value *= LR_GROWTH if secant is None else 1.0
                else:
                    blew_up = loss > best_iterate[1] + 0.25 * abs(f_start - best_iterate[1])
            if blew_up:  # back to the best iterate with half the step
                x, state = best_iterate[0].clone(), best_iterate[2]
                lr_value *= LR_BACKOFF
                if secant is not None:
                    secant.forget()
            else:
                state = new_state
                x = x - lr_value * g
            nit += 1
            message = stopping({"nit": nit, "nqueries": objective.nqueries, "loss": loss,
                                "best": objective.best_fun, "lr": lr_value})
            if message is not None:
                break
        else:
            message = f"maximum number of iterations ({maxiter}) reached"
    except BudgetExceeded as err:
        message = str(err)
    return _result(objective, method, nit, stopping, message, float(lr_value or 0.0), x)


def _result(objective: Objective, method: str, nit: int, stopping: _Stopping, message: str,
            lr: float, x_end: torch.Tensor) -> OptimizeResult:
    """The ``OptimizeResult`` of a finished run (raises when not one value was measured);
    ``x_end`` is the last iterate, returned when no value was measured (external ranker)."""
    if objective.nqueries == 0 and nit > 0:  # an external ranker saw every point
        return OptimizeResult(x=objective.export(x_end), fun=float("nan"),
                              nqueries=0, nit=nit, history=stopping.history, success=False,
                              message=message + "; no loss values were measured", lr=lr,
                              method=method)
    if objective.best_x is None:
        raise BudgetExceeded("budget too small for a single estimate: raise it or lower q",
                             nqueries=objective.nqueries)
    return OptimizeResult(x=objective.export(objective.best_x), fun=objective.best_fun,
                          nqueries=objective.nqueries, nit=nit, history=stopping.history,
                          success=stopping.success, message=message, lr=lr, method=method)


def estimate_gradient(fun: Callable[[Any], Any], x: Any, *, estimator: str | Estimator = "rge",
                      q: int | None = None, mu: float | None = None,
                      modules: Module | Sequence[Module] = (), seed: int = 0) -> tuple[Any, int]:
    """Gradient estimates at one point or at every row of a batch, from ONE call of ``fun``.

    Each row gets its own directions (drawn in row order from one generator seeded by
    ``seed``) and its own module states. Queries: B·2q (RGE central), B·(q+1) (RGE forward),
    B·(d+1) / B·2d (CGE forward / central), B·m (rank).

    Args:
        fun: batched objective ``fun(X)`` (n, d) → (n,).
        x: point of shape (d,) or batch of shape (B, d), tensor or array.
        estimator, q, mu, modules: as in ``minimize``; update rules (momentum, sign, Adam) are
            refused: this returns the raw estimate.
        seed: seeds the directions.

    Returns:
        ``(g, nqueries)``: the estimate, shape of ``x``, in the caller's array type, and the
        queries spent.
    """
    X, numpy_io, single = as_points(x, name="x")
    objective = Objective(fun, X[0], numpy_io=numpy_io)
    est = make_estimator(estimator, q=q, mu=mu)
    module = _modules("zo-sgd", modules)
    if module.is_update_rule:
        raise InputError("estimate_gradient returns the raw estimate, update rules (momentum, "
                         "sign, adam) would be ignored: drop them, or use minimize")
    generator = torch.Generator(device=X.device).manual_seed(int(seed))
    contexts = [Context(x=row, step=0, generator=generator, mu=est.mu) for row in X]
    g, _, _ = est.estimate_rows(objective, X, module, [module.init(row) for row in X], contexts)
    return objective.export(g[0] if single else g), objective.nqueries
