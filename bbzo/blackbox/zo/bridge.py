"""Autograd bridge: a black-box loss as a differentiable torch function of a batch.

``zo_function(fun)`` returns ``F`` with ``F(Z)`` (Z of shape (B, d), a tensor that may require
grad) of shape (B,). The forward pass sends Z's probes for every row to ``fun`` in ONE batched
call (``estimators.estimate_rows``); the backward pass returns ``grad_output[:, None] * ĝ`` with
ĝ the per-row ZO estimates. Anything upstream of Z (an encoder, a generator) then trains with
ordinary torch optimisers, e.g. ``torch.optim.Adam``::

    F = bbzo.zo_function(black_box, q=20, seed=0, budget=100_000)
    loss = F(encoder(x)).mean()
    loss.backward()
    opt.step()

The value returned at a row is f(Z) itself when it is measured (forward differences, or
``center=True``: one more query per row); with central differences it is the mean of the 2q
pair values, f(Z) + O(μ²) on a smooth f, at no extra query.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from bbzo.blackbox.budget import Budget
from bbzo.blackbox.zo.estimators import Estimator, RankEstimator, make_estimator
from bbzo.blackbox.zo.objective import Objective, resolve_budget
from bbzo.blackbox.zo.transforms import Context, Module, chain, probe_value
from bbzo.errors import InputError


class _MeasureCenter(Module):
    """Asks the estimator to also evaluate f(x) (nothing else)."""

    needs_center = True


class _Bridge(torch.autograd.Function):
    """forward: values at Z and per-row estimates from one batched call; backward: the chain
    rule with the estimates standing in for ∇f."""

    @staticmethod
    def forward(ctx: Any, Z: torch.Tensor, zo: ZOFunction) -> torch.Tensor:
        values, grads = zo.evaluate(Z.detach())
        ctx.save_for_backward(grads)
        return values

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (grads,) = ctx.saved_tensors
        return grad_output[:, None] * grads, None


class ZOFunction:
    """A black-box batched function made differentiable by ZO estimates (see ``zo_function``).

    Attributes:
        budget: the ``Budget`` every call reserves from (``fun.budget`` for a self-metering fun).
        nqueries: objective evaluations so far (rows of all batches).
        ncalls: forward passes so far.
    """

    def __init__(self, fun: Callable[[torch.Tensor], Any], estimator: Estimator,
                 module: Module, *, seed: int, budget: Budget | int | None) -> None:
        self.fun = fun
        self.estimator = estimator
        self.module = module
        self.seed = int(seed)
        self.budget = resolve_budget(fun, budget)
        self.ncalls = 0
        self._objective: Objective | None = None
        self._generator: torch.Generator | None = None

    @property
    def nqueries(self) -> int:
        return 0 if self._objective is None else self._objective.nqueries

    def evaluate(self, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(values (B,), estimates (B, d)) at the rows of Z, from one call of ``fun``."""
        if self._objective is None:
            self._objective = Objective(self.fun, Z[0], budget=self.budget)
            self._generator = torch.Generator(device=Z.device).manual_seed(self.seed)
        contexts = [Context(x=row, step=self.ncalls, generator=self._generator,
                            mu=self.estimator.mu) for row in Z]
        states = [self.module.init(row) for row in Z]
        g, _, probes = self.estimator.estimate_rows(self._objective, Z, self.module, states,
                                                    contexts)
        self.ncalls += 1
        values = torch.stack([probe_value(p) for p in probes])
        return values.to(Z.dtype), g.to(Z.dtype)

    def __call__(self, Z: torch.Tensor) -> torch.Tensor:
        """f at each row of Z (B, d) → (B,), differentiable through ZO estimates."""
        if not isinstance(Z, torch.Tensor) or Z.ndim != 2 or not Z.is_floating_point():
            raise InputError(f"F(Z) takes a float tensor of shape (B, d), got "
                             f"{getattr(Z, 'shape', type(Z).__name__)}; reshape it to (B, d)")
        return _Bridge.apply(Z, self)

    def __repr__(self) -> str:
        return (f"ZOFunction(estimator={type(self.estimator).__name__}, module={self.module!r}, "
                f"nqueries={self.nqueries})")


def zo_function(fun: Callable[[torch.Tensor], Any], estimator: str | Estimator = "rge", *,
                q: int | None = None, mu: float | None = None,
                modules: Module | Sequence[Module] = (), center: bool = False, seed: int = 0,
                budget: Budget | int | None = None) -> ZOFunction:
    """Wrap a black-box batched function as a differentiable torch function.

    Args:
        fun: ``fun(X)`` with X a torch tensor of shape (n, d) → (n,); never differentiated.
        estimator: "rge", "cge", "rank" or an ``Estimator`` instance.
        q, mu: as in ``minimize`` (refused with an instance, ``q`` refused with "cge").
        modules: estimate-stage modules, applied per row with fresh state on each call;
            update rules (the torch optimiser updates) and modules that carry state from step
            to step (``hizoo``, ``history_subspace``) are refused.
        center: also evaluate f(Z) (one more query per row) so the value is exact with
            central differences.
        seed: seeds the generator every call draws its directions from.
        budget: a ``Budget`` or a maximum number of queries over all calls.

    Returns:
        A ``ZOFunction`` ``F``: ``F(Z)`` (B, d) → (B,); ``F.nqueries`` counts queries.
    """
    est = make_estimator(estimator, q=q, mu=mu)
    module = chain(*([modules] if isinstance(modules, Module) else modules))
    if module.is_update_rule:
        raise InputError("zo_function returns estimates to torch; the torch optimiser applies "
                         "the update: drop momentum()/sign()/adam() from modules")
    if module.across_steps:
        carried = [m for m in module.modules if m.across_steps]
        raise InputError(f"{', '.join(map(repr, carried))} carries state from step to step at "
                         f"one point, but each F(Z) call estimates at new points: drop it")
    if isinstance(est, RankEstimator):
        if est.ranker is not None:
            raise InputError("zo_function needs values to return: use the rank estimator "
                             "without an external ranker")
        if center:
            raise InputError("center=True needs estimator 'rge' or 'cge'")
    if center:
        module = chain(_MeasureCenter(), module)
    return ZOFunction(fun, est, module, seed=seed, budget=budget)
