"""Gradient estimators from function values (or only their ordering).

Each estimator evaluates all perturbed points of a step in **one** batched call of the
objective, runs the module hooks (see ``transforms``) and returns the (d,) estimate.

| estimator | queries per step | what it assumes |
| --- | --- | --- |
| ``RGE(difference="central")`` | 2q (+1 if a module needs f(x)) | f smooth |
| ``RGE(difference="forward")`` | q + 1 | f smooth |
| ``CGE(difference="forward")`` | b + 1 (b = block size, d by default) | f smooth |
| ``CGE(difference="central")`` | 2b | f smooth |
| ``RankEstimator`` | m | only an ordering of the m values is trusted |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bbzo.blackbox.zo.directions import DISTRIBUTIONS, sample_directions
from bbzo.blackbox.zo.transforms import Context, Module, Probe
from bbzo.checks import int_at_least, one_of, positive
from bbzo.errors import InputError

Batched = Callable[[torch.Tensor], torch.Tensor]  # (n, d) -> (n,)
Ranker = Callable[[torch.Tensor], torch.Tensor]   # (m, d) -> (m,) indices, best first


class Estimator:
    """Base class. ``estimate`` returns (g, module_state, probe)."""

    mu: float

    def estimate(self, objective: Batched, x: torch.Tensor, module: Module, state: Any,
                 ctx: Context) -> tuple[torch.Tensor, Any, Probe]:
        raise NotImplementedError


class RGE(Estimator):
    """Randomised gradient estimator.

    central: ĝ = (1/q) Σ [f(x+μu_i) − f(x−μu_i)]/(2μ) u_i      (2q queries)
    forward: ĝ = (1/q) Σ [f(x+μu_i) − f(x)]/μ u_i               (q + 1 queries)

    Args:
        q: number of directions per step.
        mu: smoothing radius (perturbation is μu, ‖u‖ ≈ √d).
        distribution: "gaussian", "sphere" (√d-scaled) or "rademacher".
        difference: "central" or "forward".
    """

    def __init__(self, q: int = 10, mu: float = 1e-3, distribution: str = "gaussian",
                 difference: str = "central") -> None:
        self.q = int_at_least("q", q)
        self.mu = positive("mu", mu)
        self.distribution = one_of("distribution", distribution, DISTRIBUTIONS)
        self.difference = one_of("difference", difference, ("forward", "central"))


    def estimate(self, objective, x, module, state, ctx):
        d = x.numel()
        u = sample_directions(self.distribution, self.q, d, ctx.generator, x.dtype, x.device)
        u, state = module.directions(u, state, ctx)
        q, mu = u.shape[0], self.mu
        central = self.difference == "central"
        center = module.needs_center or not central
        parts = [x + mu * u]
        if central:
            parts.append(x - mu * u)
        if center:
            parts.append(x[None])
        y = objective(torch.cat(parts))
        f_plus = y[:q]
        f_minus = y[q:2 * q] if central else None
        f_center = y[-1] if center else None
        if central:
            s = (f_plus - f_minus) / (2 * mu)
        else:
            s = (f_plus - f_center) / mu
        probe = Probe(u, f_plus, f_minus, f_center)
        state = module.observe(probe, state, ctx)
        s, state = module.scalars(s, state, ctx)
        g = (s[:, None] * u).sum(0) / q
        g, state = module.gradient(g, state, ctx)
        return g, state, probe


class CGE(Estimator):
    """Coordinate-wise gradient estimator.

    ĝ_i = [f(x+μe_i) − f(x)]/μ (forward) or [f(x+μe_i) − f(x−μe_i)]/(2μ) (central) for every
    coordinate i of the block; other coordinates are 0. ``block=None`` uses all d coordinates
    (exact up to O(μ)); ``block=b`` draws b coordinates at random each step (coordinate descent;
    the estimate is not rescaled).
    """

    def __init__(self, mu: float = 1e-4, difference: str = "forward",
                 block: int | None = None) -> None:
        self.mu = positive("mu", mu)
        self.difference = one_of("difference", difference, ("forward", "central"))
        self.block = None if block is None else int_at_least("block", block)


    def estimate(self, objective, x, module, state, ctx):
        if module.shapes_directions:
            raise InputError("CGE perturbs coordinates; modules that reshape directions "
                             "(antithetic, orthogonal, masks, low-rank, HiZOO) need estimator "
                             "'rge'")
        d = x.numel()
        if self.block is None or self.block >= d:
            idx = torch.arange(d, device=x.device)
        else:
            idx = torch.randperm(d, generator=ctx.generator, device=x.device)[:self.block]
        b, mu = idx.numel(), self.mu
        e = torch.zeros(b, d, dtype=x.dtype, device=x.device)
        e[torch.arange(b, device=x.device), idx] = 1.0
        central = self.difference == "central"
        parts = [x + mu * e] + ([x - mu * e] if central else [x[None]])
        y = objective(torch.cat(parts))
        f_plus = y[:b]
        if central:
            f_minus, f_center = y[b:], None
            s = (f_plus - f_minus) / (2 * mu)
        else:
            f_minus, f_center = None, y[b]
            s = (f_plus - f_center) / mu
        probe = Probe(e, f_plus, f_minus, f_center)
        state = module.observe(probe, state, ctx)
        s, state = module.scalars(s, state, ctx)
        g = torch.zeros_like(x)
        g[idx] = s
        g, state = module.gradient(g, state, ctx)
        return g, state, probe


class RankEstimator(Estimator):
    """ZO-RankSGD: an estimate from the *ordering* of f at x+μu_1..x+μu_m only.

    ĝ = Σ_{(i, j): i ranked better than j} (u_j − u_i) / #pairs, which equals
    Σ_k (2 r_k − (m − 1)) u_k / #pairs with r_k the 0-based rank of point k (0 = best).
    Only the ordering is used, so ``ranker`` may be a human or an LLM judge: a callable that
    takes the (m, d) points and returns their indices best first. Without one the objective's
    values are sorted. The estimate is aligned with ∇f, its scale is not.
    """

    def __init__(self, m: int = 10, mu: float = 1e-3, distribution: str = "gaussian",
                 ranker: Ranker | None = None) -> None:
        if int_at_least("m", m) < 2:
            raise InputError("the rank estimator needs m >= 2 points to order")
        self.m = m
        self.mu = positive("mu", mu)
        self.distribution = one_of("distribution", distribution, DISTRIBUTIONS)
        self.ranker = ranker


    def estimate(self, objective, x, module, state, ctx):
        u = sample_directions(self.distribution, self.m, x.numel(), ctx.generator, x.dtype,
                              x.device)
        u, state = module.directions(u, state, ctx)
        m = u.shape[0]
        points = x + self.mu * u
        if self.ranker is None:
            f_plus = objective(points)
            order = torch.argsort(f_plus, stable=True)
        else:
            f_plus = torch.full((m,), float("nan"), dtype=x.dtype, device=x.device)
            order = torch.as_tensor(self.ranker(points), device=x.device).long()
            if sorted(order.tolist()) != list(range(m)):
                raise InputError(f"ranker must return a permutation of range({m}), best first")
        rank = torch.empty(m, dtype=x.dtype, device=x.device)
        rank[order] = torch.arange(m, dtype=x.dtype, device=x.device)
        weights = (2 * rank - (m - 1)) / (m * (m - 1) / 2)
        probe = Probe(u, f_plus, None, None)
        state = module.observe(probe, state, ctx)
        weights, state = module.scalars(weights, state, ctx)
        g = (weights[:, None] * u).sum(0)
        g, state = module.gradient(g, state, ctx)
        return g, state, probe


ESTIMATORS = {"rge": RGE, "cge": CGE, "rank": RankEstimator}


def make_estimator(name: str | Estimator, **options: Any) -> Estimator:
    """Build an estimator from its name ("rge", "cge", "rank") and options, or pass one through.

    Options set to None are dropped so each estimator keeps its own default.
    """
    if isinstance(name, Estimator):
        return name
    options = {k: v for k, v in options.items() if v is not None}
    if name not in ESTIMATORS:
        raise InputError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
    if name == "rank" and "q" in options:
        options["m"] = options.pop("q")
    if name == "cge":
        options.pop("q", None)
    try:
        return ESTIMATORS[name](**options)
    except TypeError as err:
        raise InputError(f"bad option for estimator {name!r}: {err}") from None
