"""Gradient estimators from function values (or only their ordering), on one point or per row of
a batch, all run by one pipeline.

``Estimator.estimate_rows`` is that pipeline: draw directions per row → module ``directions``
hooks → one batched call of the objective for every probe of every row → ``observe`` →
scalars (differences, or ranks) → module ``scalars`` → combine ĝ = Σ sᵢuᵢ / scale → module
``gradient``. The update rule (``update`` stage) is not part of it. It is split in
``ask_rows`` (build the batch) and ``tell_rows`` (finish from the values) so that ask/tell
optimisers (``EvolutionStrategy``) run it too. Module hooks run once per row, each row with its
own state, so every module acts per row.

| estimator | queries per row | what it assumes |
| --- | --- | --- |
| ``RGE(difference="central")`` | 2q (+1 if a module needs f(x)) | f smooth |
| ``RGE(difference="forward")`` | q + 1 | f smooth |
| ``CGE(difference="forward")`` | b + 1 (b = block size, d by default) | f smooth |
| ``CGE(difference="central")`` | 2b | f smooth |
| ``RankEstimator`` | m (0 with an external ranker) | only an ordering of the m values is trusted |
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bbzo.blackbox.zo.directions import DISTRIBUTIONS, sample_directions
from bbzo.blackbox.zo.transforms import Context, Module, Probe, acts_at, difference_scalars
from bbzo.checks import int_at_least, one_of, positive
from bbzo.errors import InputError

Batched = Callable[[torch.Tensor], torch.Tensor]  # (n, d) -> (n,)
Ranker = Callable[[torch.Tensor], torch.Tensor]   # (m, d) -> (m,) indices, best first
# (f_plus (B, k), f_minus (B, k) | None, f_center (B, 1) | None, mu) -> (B, k) scalars
Scalars = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None, float], torch.Tensor]


@dataclass
class Asked:
    """A batch of probes built by ``ask_rows`` and awaiting its values.

    Attributes:
        points: (B·n, d) points to evaluate, row after row; per row n = k (+k) (+1):
            x + μu (k rows), then x − μu (k rows, central), then x (center).
        directions: (B, k, d) directions after every ``directions`` hook.
        states: per-row module states after the ``directions`` hooks.
        contexts: per-row contexts.
        central: whether the x − μu rows are there.
        center: whether the x row is there.
    """

    points: torch.Tensor
    directions: torch.Tensor
    states: list
    contexts: list[Context]
    central: bool
    center: bool

    @property
    def per_row(self) -> int:
        """Points per row."""
        k = self.directions.shape[1]
        return k * (2 if self.central else 1) + int(self.center)


def ask_rows(x: torch.Tensor, u: torch.Tensor, module: Module, states: Sequence[Any],
             contexts: Sequence[Context], *, central: bool, center: bool) -> Asked:
    """Run the ``directions`` hooks on each row's (k, d) directions and build the batch.

    Args:
        x: (B, d) points.
        u: (B, k, d) drawn directions.
        states, contexts: one module state and one ``Context`` per row.
    """
    states = list(states)
    if acts_at(module, "directions"):
        rows = []
        for b in range(x.shape[0]):
            ub, states[b] = module.directions(u[b], states[b], contexts[b])
            rows.append(ub)
        if len({r.shape for r in rows}) > 1:
            raise InputError(f"{module!r} gave rows of a batch different numbers of directions; "
                             f"use it on one point at a time")
        u = torch.stack(rows)
    mu = contexts[0].mu
    parts = [x[:, None] + mu * u]
    if central:
        parts.append(x[:, None] - mu * u)
    if center:
        parts.append(x[:, None])
    points = torch.cat(parts, dim=1).reshape(-1, x.shape[1])
    return Asked(points, u, states, list(contexts), central, center)


def tell_rows(asked: Asked, y: torch.Tensor, module: Module, scalars: Scalars, *,
              scale: Callable[[int], float], measured: bool = True
              ) -> tuple[torch.Tensor, list, list[Probe]]:
    """Finish the estimates from the (B·n,) values of ``asked.points``.

    ``scalars(f_plus, f_minus, f_center, mu)`` for all rows at once; per row ``observe`` and
    module ``scalars``; ĝ = Σ sᵢuᵢ / scale(k) for all rows; per row module ``gradient``
    (the per-row loops only run when a module acts at those stages).

    Args:
        measured: False when ``y`` holds ranks, not values (external ranker); the probes then
            carry NaN values.

    Returns:
        (g (B, d), per-row states, per-row probes).
    """
    B, k, _ = asked.directions.shape
    values = y.reshape(B, asked.per_row)
    f_plus = values[:, :k]
    f_minus = values[:, k:2 * k] if asked.central else None
    f_center = values[:, -1:] if asked.center else None
    s = scalars(f_plus, f_minus, f_center, asked.contexts[0].mu)
    probes = [Probe(asked.directions[b], f_plus[b], None if f_minus is None else f_minus[b],
                    None if f_center is None else f_center[b, 0]) if measured else
              Probe(asked.directions[b], torch.full_like(f_plus[b], float("nan")), None, None)
              for b in range(B)]
    states = list(asked.states)
    if acts_at(module, "observe") or acts_at(module, "scalars"):
        rows = []
        for b in range(B):
            state = module.observe(probes[b], states[b], asked.contexts[b])
            sb, states[b] = module.scalars(s[b], state, asked.contexts[b])
            rows.append(sb)
        s = torch.stack(rows)
    g = torch.einsum("bk,bkd->bd", s, asked.directions) / scale(k)
    if acts_at(module, "gradient"):
        rows = []
        for b in range(B):
            gb, states[b] = module.gradient(g[b], states[b], asked.contexts[b])
            rows.append(gb)
        g = torch.stack(rows)
    return g, states, probes


class Estimator:
    """Base class. Subclasses say how directions are drawn (``draw``), which probes a row needs
    (``layout``), how scalars come from the values (``raw_scalars``) and how ĝ is normalised
    (``scale``); ``estimate_rows`` and ``estimate`` are shared."""

    mu: float

    def check(self, module: Module) -> None:
        """Raise ``InputError`` for a module this estimator cannot honour."""

    def draw(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, k, d) directions for the (B, d) points."""
        raise NotImplementedError

    def layout(self, module: Module) -> tuple[bool, bool]:
        """(central, center): which probes each row needs."""
        raise NotImplementedError

    def raw_scalars(self, f_plus, f_minus, f_center, mu) -> torch.Tensor:
        return difference_scalars(f_plus, f_minus, f_center, mu)

    def scale(self, k: int) -> float:
        return float(k)

    def evaluate(self, objective: Batched, asked: Asked) -> tuple[torch.Tensor, bool]:
        """Values of ``asked.points`` in one call, and whether they are measured values."""
        return objective(asked.points), True

    def estimate_rows(self, objective: Batched, x: torch.Tensor, module: Module,
                      states: Sequence[Any], contexts: Sequence[Context]
                      ) -> tuple[torch.Tensor, list, list[Probe]]:
        """Estimates at each row of ``x`` (B, d) from one call of ``objective``.

        Returns (g (B, d), per-row module states, per-row probes).
        """
        self.check(module)
        central, center = self.layout(module)
        u = self.draw(x, contexts[0].generator)
        asked = ask_rows(x, u, module, states, contexts, central=central, center=center)
        y, measured = self.evaluate(objective, asked)
        return tell_rows(asked, y, module, self.raw_scalars, scale=self.scale, measured=measured)

    def estimate(self, objective: Batched, x: torch.Tensor, module: Module, state: Any,
                 ctx: Context) -> tuple[torch.Tensor, Any, Probe]:
        """The estimate at one point x (d,): returns (g (d,), module state, probe)."""
        g, states, probes = self.estimate_rows(objective, x[None], module, [state], [ctx])
        return g[0], states[0], probes[0]


class RGE(Estimator):
    """Randomised gradient estimator.

    central: ĝ = (1/q) Σ [f(x+μu_i) − f(x−μu_i)]/(2μ) u_i      (2q queries)
    forward: ĝ = (1/q) Σ [f(x+μu_i) − f(x)]/μ u_i               (q + 1 queries)

    Args:
        q: number of directions per step (per row of a batch).
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

    def draw(self, x, generator):
        B, d = x.shape
        u = sample_directions(self.distribution, B * self.q, d, generator, x.dtype, x.device)
        return u.reshape(B, self.q, d)

    def layout(self, module):
        central = self.difference == "central"
        return central, module.needs_center or not central


class CGE(Estimator):
    """Coordinate-wise gradient estimator.

    ĝ_i = [f(x+μe_i) − f(x)]/μ (forward) or [f(x+μe_i) − f(x−μe_i)]/(2μ) (central) for every
    coordinate i of the block; other coordinates are 0. ``block=None`` uses all d coordinates
    (exact up to O(μ)); ``block=b`` draws b coordinates at random each step, per row
    (coordinate descent; the estimate is not rescaled).
    """

    def __init__(self, mu: float = 1e-4, difference: str = "forward",
                 block: int | None = None) -> None:
        self.mu = positive("mu", mu)
        self.difference = one_of("difference", difference, ("forward", "central"))
        self.block = None if block is None else int_at_least("block", block)

    def check(self, module):
        if module.shapes_directions:
            raise InputError("CGE perturbs coordinates; modules that reshape directions "
                             "(antithetic, orthogonal, masks, low-rank, HiZOO) need estimator "
                             "'rge'")

    def draw(self, x, generator):
        B, d = x.shape
        if self.block is None or self.block >= d:
            eye = torch.eye(d, dtype=x.dtype, device=x.device)
            return eye.expand(B, d, d)
        idx = torch.stack([torch.randperm(d, generator=generator, device=x.device)[:self.block]
                           for _ in range(B)])
        e = torch.zeros(B, self.block, d, dtype=x.dtype, device=x.device)
        return e.scatter_(2, idx[:, :, None], 1.0)

    def layout(self, module):
        central = self.difference == "central"
        return central, module.needs_center or not central

    def scale(self, k):
        return 1.0


class RankEstimator(Estimator):
    """ZO-RankSGD: an estimate from the *ordering* of f at x+μu_1..x+μu_m only.

    ĝ = Σ_{(i, j): i ranked better than j} (u_j − u_i) / #pairs, which equals
    Σ_k (2 r_k − (m − 1)) u_k / #pairs with r_k the 0-based rank of point k (0 = best).
    Only the ordering is used, so ``ranker`` may be a human or an LLM judge: a callable that
    takes the (m, d) points and returns their indices best first (called once per row). Without
    one the objective's values are sorted. The estimate is aligned with ∇f, its scale is not.
    Refuses modules that need f(x) or fitness shaping (the ranks are the shaping), and, with a
    ranker, every module that reads values.
    """

    def __init__(self, m: int = 10, mu: float = 1e-3, distribution: str = "gaussian",
                 ranker: Ranker | None = None) -> None:
        if int_at_least("m", m) < 2:
            raise InputError("the rank estimator needs m >= 2 points to order")
        self.m = m
        self.mu = positive("mu", mu)
        self.distribution = one_of("distribution", distribution, DISTRIBUTIONS)
        self.ranker = ranker

    def check(self, module):
        if module.needs_center:
            raise InputError(f"{module!r} needs f(x), which the rank estimator does not measure: "
                             f"use estimator 'rge' (for hizoo() with difference='central')")
        if module.replaces_scalars:
            raise InputError(f"the rank estimator is rank-based already; fitness shaping in "
                             f"{module!r} needs estimator 'rge' or 'cge'")
        if self.ranker is not None and module.needs_values:
            raise InputError(f"an external ranker gives no values; {module!r} needs them: use "
                             f"the objective's values (ranker=None) or drop the module")

    def draw(self, x, generator):
        B, d = x.shape
        u = sample_directions(self.distribution, B * self.m, d, generator, x.dtype, x.device)
        return u.reshape(B, self.m, d)

    def layout(self, module):
        return False, False

    def evaluate(self, objective, asked):
        if self.ranker is None:
            return objective(asked.points), True
        m = asked.directions.shape[1]
        ranks = []
        for points in asked.points.reshape(-1, m, asked.points.shape[1]):
            order = torch.as_tensor(self.ranker(points), device=points.device).long()
            if sorted(order.tolist()) != list(range(m)):
                raise InputError(f"ranker must return a permutation of range({m}), best first")
            rank = torch.empty(m, dtype=points.dtype, device=points.device)
            rank[order] = torch.arange(m, dtype=points.dtype, device=points.device)
            ranks.append(rank)
        return torch.cat(ranks), False

    def raw_scalars(self, f_plus, f_minus, f_center, mu):
        m = f_plus.shape[-1]
        order = torch.argsort(f_plus, dim=-1, stable=True)
        positions = torch.arange(m, dtype=f_plus.dtype, device=f_plus.device).expand_as(f_plus)
        rank = torch.empty_like(f_plus).scatter_(-1, order, positions)
        return (2 * rank - (m - 1)) / (m * (m - 1) / 2)

    def scale(self, k):
        return 1.0


ESTIMATORS = {"rge": RGE, "cge": CGE, "rank": RankEstimator}


def make_estimator(name: str | Estimator, **options: Any) -> Estimator:
    """Build an estimator from its name ("rge", "cge", "rank") and options, or pass one through.

    Options set to None are dropped so each estimator keeps its own default. An option the
    estimator would ignore (``q`` with "cge", any option with an instance) is an ``InputError``.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if isinstance(name, Estimator):
        if options:
            raise InputError(f"{', '.join(options)} would be ignored with an estimator instance; "
                             f"set them in the instance, e.g. RGE(q=..., mu=...)")
        return name
    if name not in ESTIMATORS:
        raise InputError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
    if name == "rank" and "q" in options:
        options["m"] = options.pop("q")
    if name == "cge" and "q" in options:
        raise InputError("q is not used by estimator 'cge' (it perturbs all d coordinates, or "
                         "block=b of them): drop q")
    try:
        return ESTIMATORS[name](**options)
    except TypeError as err:
        raise InputError(f"bad option for estimator {name!r}: {err}") from None
