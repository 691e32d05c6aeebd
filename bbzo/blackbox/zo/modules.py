"""Variance-reduction and "power" modules for the ZO estimators (compose them with ``chain``).

Each module acts at one or more stages of an estimate (see ``transforms``). Shapes: x is (d,),
directions are (q, d), scalars (q,), the estimate (d,).

| name | factory | stage | extra queries per step | extra memory |
| --- | --- | --- | --- | --- |
| ``antithetic`` | ``antithetic()`` | directions | q (±u pairs) | none |
| ``orthogonal`` | ``orthogonal()`` | directions | none | none (O(d q²) compute) |
| ``random-mask`` | ``random_mask(density, every)`` | directions | none | one d-mask |
| ``magnitude-mask`` | ``magnitude_mask(density, keep, every)`` | directions | none | one d-mask |
| ``blockwise`` | ``blockwise(sizes, order, every)`` | directions | none | none |
| ``low-rank`` | ``low_rank(shape, rank, refresh)`` | directions | none | (m + n) r per matrix |
| ``history-subspace`` | ``history_subspace(k)`` | gradient | none | k d-vectors |
| ``hizoo`` | ``hizoo(alpha, eps)`` | directions, observe | 1 (f(x)) | one d-vector |
| ``centered-rank`` | ``centered_rank()`` | observe, scalars | none | none |
| ``standardize`` | ``standardize()`` | observe, scalars | none | none |
| ``clip-scalars`` | ``clip_scalars(threshold)`` | scalars | none | none |

Order matters in a chain: modules that confine directions (masks, ``blockwise``,
``low_rank``) or orthogonalise them come first, then ``antithetic`` (pairs must stay pairs),
then ``hizoo`` (the last module that changes directions); fitness shaping (``centered_rank``,
``standardize``) comes before ``clip_scalars``; ``history_subspace`` acts on the estimate.
``orthogonal`` is meant for full-space directions: after a mask it still scales rows to √d,
before one the rows stop being orthogonal. Hooks run once per row of a batch, each row with its
own state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import accumulate
from typing import Any, NamedTuple

import torch

from bbzo.blackbox.zo.transforms import Context, Module, Probe, difference_scalars
from bbzo.checks import fraction, int_at_least, one_of, positive
from bbzo.errors import InputError


def _independent(scale: torch.Tensor) -> torch.Tensor:
    """Mask of the entries of a (k,) vector of |diag R| or singular values that are clearly
    non-zero next to the largest one, given the dtype's rounding."""
    return scale > scale.max() * 1e3 * torch.finfo(scale.dtype).eps


def _orthonormal_columns(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """QR of a (n, k) with diag(R) ≥ 0, so Q is uniformly (Haar) distributed when a is
    Gaussian. Returns Q (n, k) and |diag R| (k,)."""
    q, r = torch.linalg.qr(a)
    diag = torch.diagonal(r)
    return q * torch.where(diag < 0, -1.0, 1.0).to(q.dtype), diag.abs()


def centered_ranks(values: torch.Tensor) -> torch.Tensor:
    """Centred-rank fitness shaping: rank/(n−1) − ½ per value, ties sharing their mean rank.

    Args:
        values: (n,) values, n >= 2.

    Returns:
        (n,) weights in [−0.5, 0.5] summing to zero; the highest value gets +0.5.
    """
    n = values.numel()
    ordered = torch.sort(values).values
    below = torch.searchsorted(ordered, values, right=False)
    not_above = torch.searchsorted(ordered, values, right=True)
    rank = (below + not_above - 1).to(values.dtype) / 2
    return rank / (n - 1) - 0.5


def standardized(values: torch.Tensor) -> torch.Tensor:
    """z-scores of (n,) values (all 0 when they are equal)."""
    std = values.std()
    return (values - values.mean()) / std if std > 0 else torch.zeros_like(values)


class Antithetic(Module):
    """Append −u for every direction: q directions become 2q rows (±u pairs).

    Even-order Taylor terms cancel between the two rows of a pair, so with forward differences
    the estimate equals the central-difference one on the same directions (the O(μ) bias and
    its noise go away). With central differences the pairs are already there: the estimate is
    unchanged and the cost doubles, so use it with "forward" or the rank estimator.

    Extra queries: q per step. Extra memory: none.
    """

    shapes_directions = True

    def directions(self, u, state, ctx):
        return torch.cat([u, -u]), state


class Orthogonal(Module):
    """Replace the q directions by an orthonormal basis of their span, rows scaled to norm √d.

    For Gaussian u the basis is uniformly distributed, so E[uuᵀ] = I still holds; with q = d
    the estimate is exact up to the difference error. Needs q ≤ d and independent directions
    (put ``antithetic`` after it, not before).

    Extra queries: none. Extra memory: none (O(d q²) compute per step).
    """

    shapes_directions = True

    def directions(self, u, state, ctx):
        q, d = u.shape
        if q > d:
            raise InputError(f"orthogonal() needs at most d = {d} directions, got q = {q}; "
                             f"lower q or drop orthogonal()")
        basis, diag = _orthonormal_columns(u.T)
        if not _independent(diag).all():
            raise InputError("orthogonal() got linearly dependent directions; put antithetic() "
                             "after orthogonal() in the chain, not before")
        return basis.T * math.sqrt(d), state


class Drawn(NamedTuple):
    """State of a module redrawn every few steps.

    Attributes:
        value: what was drawn (a mask, a block index, bases), None before the first draw.
        step: the step it was drawn at.
    """

    value: Any
    step: int


class _Redrawn(Module):
    """Shapes directions with something drawn at the first step and redrawn every ``every``
    steps. Subclasses define ``_draw`` and ``_apply``."""

    shapes_directions = True
    every: int

    def init(self, x):
        return Drawn(None, 0)

    def directions(self, u, state, ctx):
        if state.value is None or ctx.step - state.step >= self.every:
            state = Drawn(self._draw(state.value, ctx), ctx.step)
        return self._apply(u, state.value), state

    def _draw(self, previous: Any, ctx: Context) -> Any:
        raise NotImplementedError

    def _apply(self, u: torch.Tensor, value: Any) -> torch.Tensor:
        raise NotImplementedError


def _kept(density: float, d: int) -> int:
    return max(1, round(density * d))


def _mask(index: torch.Tensor, d: int) -> torch.Tensor:
    mask = torch.zeros(d, dtype=torch.bool, device=index.device)
    mask[index] = True
    return mask


class _Mask(_Redrawn):
    """Zero every direction outside a (d,) boolean mask: the estimate is that of the gradient
    restricted to the mask (not rescaled), 0 elsewhere."""

    def _apply(self, u, mask):
        return u * mask


class RandomMask(_Mask):
    """Perturb only a random ``density`` fraction of the coordinates (at least one), the mask
    redrawn every ``every`` steps. The effective dimension, hence the variance, drops to
    density·d.

    Extra queries: none. Extra memory: one (d,) mask.
    """

    def __init__(self, density: float, every: int = 1) -> None:
        self.density = fraction("density", density)
        self.every = int_at_least("every", every)

    def _draw(self, previous, ctx):
        d = ctx.x.numel()
        index = torch.randperm(d, generator=ctx.generator, device=ctx.x.device)
        return _mask(index[:_kept(self.density, d)], d)


class MagnitudeMask(_Mask):
    """Sparse-MeZO mask: perturb only the ``density`` fraction of coordinates with the smallest
    (``keep="small"``) or largest (``keep="large"``) |x|, recomputed every ``every`` steps.

    Extra queries: none. Extra memory: one (d,) mask.
    """

    def __init__(self, density: float, keep: str = "small", every: int = 1) -> None:
        self.density = fraction("density", density)
        self.keep = one_of("keep", keep, ("small", "large"))
        self.every = int_at_least("every", every)

    def _draw(self, previous, ctx):
        d = ctx.x.numel()
        index = torch.topk(ctx.x.abs(), _kept(self.density, d), largest=self.keep == "large")
        return _mask(index.indices, d)


class Blockwise(_Redrawn):
    """ZO-Bench block-wise perturbation: perturb one block of consecutive coordinates at a time
    (the same one for ``every`` steps), blocks taken in turn (``order="cyclic"``) or at random
    (``"random"``). The estimate is that of the block's gradient, 0 elsewhere.

    Args:
        sizes: the block sizes in order (summing to d), or one int b for blocks of b
            coordinates (the last one shorter).

    Extra queries: none. Extra memory: none.
    """

    def __init__(self, sizes: int | Sequence[int], order: str = "cyclic", every: int = 1) -> None:
        if isinstance(sizes, Sequence) and not isinstance(sizes, str):
            self.sizes: int | tuple[int, ...] = tuple(int_at_least("each block size", s)
                                                      for s in sizes)
            if not self.sizes:
                raise InputError("blockwise() needs at least one block size")
        else:
            self.sizes = int_at_least("sizes", sizes)
        self.order = one_of("order", order, ("cyclic", "random"))
        self.every = int_at_least("every", every)

    def _bounds(self, d: int) -> list[tuple[int, int]]:
        if isinstance(self.sizes, int):
            return [(a, min(a + self.sizes, d)) for a in range(0, d, self.sizes)]
        if sum(self.sizes) != d:
            raise InputError(f"blockwise() block sizes sum to {sum(self.sizes)} but x has "
                             f"d = {d} coordinates; give sizes that add up to d")
        edges = list(accumulate(self.sizes, initial=0))
        return list(zip(edges[:-1], edges[1:], strict=True))

    def init(self, x):
        self._bounds(x.numel())
        return super().init(x)

    def _draw(self, previous, ctx):
        n = len(self._bounds(ctx.x.numel()))
        if self.order == "random":
            return int(torch.randint(n, (1,), generator=ctx.generator, device=ctx.x.device))
        return 0 if previous is None else (previous + 1) % n

    def _apply(self, u, index):
        start, stop = self._bounds(u.shape[1])[index]
        out = torch.zeros_like(u)
        out[:, start:stop] = u[:, start:stop]
        return out


def _shapes(shape: Sequence[int] | Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    """One shape or a list of shapes → tuple of 1-D (n,) or 2-D (m, n) shapes; a k-D shape
    (k > 2) becomes (first dim, product of the rest)."""
    if isinstance(shape, Sequence) and shape and all(isinstance(s, int) for s in shape):
        shape = [shape]
    if not isinstance(shape, Sequence) or not shape:
        raise InputError(f"shape must be (m, n) or a list of shapes, got {shape!r}")
    out = []
    for s in shape:
        if not isinstance(s, Sequence) or not s:
            raise InputError(f"each shape must be a non-empty tuple of ints, got {s!r}")
        dims = [int_at_least("each shape dimension", v) for v in s]
        out.append(tuple(dims) if len(dims) <= 2 else (dims[0], math.prod(dims[1:])))
    return tuple(out)


class LowRank(_Redrawn):
    """SubZero low-rank perturbation: x is read as blocks of the given shapes, in order; each
    (m, n) block of a direction becomes z = U z₀ V with orthonormal U (m×r), V (r×n) redrawn
    every ``refresh`` steps and z₀ = Uᵀ Z Vᵀ (r×r) the projection of the incoming block Z
    (Gaussian when the directions are), scaled by √(mn)/r so E‖z‖² = mn. 1-D blocks stay as
    they come. The rank is capped at min(m, n) per matrix.

    Extra queries: none. Extra memory: (m + n)·r per matrix (the bases).
    """

    def __init__(self, shape: Sequence[int] | Sequence[Sequence[int]], rank: int = 4,
                 refresh: int = 100) -> None:
        self.shapes = _shapes(shape)
        self.rank = int_at_least("rank", rank)
        self.every = int_at_least("refresh", refresh)

    def init(self, x):
        total = sum(math.prod(s) for s in self.shapes)
        if total != x.numel():
            raise InputError(f"low_rank() shapes hold {total} values but x has d = {x.numel()}; "
                             f"give the shapes of all blocks of x, in order")
        return super().init(x)

    def _draw(self, previous, ctx):
        bases = []
        for s in self.shapes:
            if len(s) == 1:
                bases.append(None)
                continue
            r = min(self.rank, *s)
            left, right = (torch.randn(n, r, generator=ctx.generator, dtype=ctx.x.dtype,
                                       device=ctx.x.device) for n in s)
            bases.append((_orthonormal_columns(left)[0], _orthonormal_columns(right)[0].T))
        return tuple(bases)

    def _apply(self, u, bases):
        pieces, start = [], 0
        for s, basis in zip(self.shapes, bases, strict=True):
            size = math.prod(s)
            block = u[:, start:start + size]
            start += size
            if basis is None:
                pieces.append(block)
                continue
            left, right = basis
            z0 = left.T @ block.reshape(-1, *s) @ right.T
            scale = math.sqrt(size) / left.shape[1]
            pieces.append((left @ z0 @ right).reshape(-1, size) * scale)
        return torch.cat(pieces, dim=1)


class HistorySubspace(Module):
    """Denoise the estimate by projecting it onto the span of the last k raw estimates.

    When the true gradient changes slowly, every recent estimate is that gradient plus
    independent noise, so their span holds most of the gradient but only k of the d noise
    dimensions: the projection keeps a k/d share of the new estimate's noise. The result is
    shorter than the raw estimate (the step size absorbs it). The first step passes through.
    The raw estimate is stored, never the projected one (that would freeze the subspace).
    While every stored estimate is 0 the estimate also passes through.

    Extra queries: none. Extra memory: k d-vectors.
    """

    across_steps = True

    def __init__(self, k: int = 8) -> None:
        self.k = int_at_least("k", k)

    def init(self, x):
        return x.new_zeros(0, x.numel())

    def gradient(self, g, state, ctx):
        history = torch.cat([state, g[None]])[-self.k:]
        if state.shape[0] == 0:
            return g, history
        _, singular, basis = torch.linalg.svd(state, full_matrices=False)
        basis = basis[_independent(singular)]
        if basis.shape[0] == 0:  # only zero estimates so far: nothing to project on
            return g, history
        return basis.T @ (basis @ g), history


class HizooState(NamedTuple):
    """HiZOO state.

    Attributes:
        sigma: (d,) diagonal curvature estimate Σ (init 1).
        z: (q, d) this step's directions before preconditioning; None between steps.
    """

    sigma: torch.Tensor
    z: torch.Tensor | None


class Hizoo(Module):
    """HiZOO diagonal-Hessian preconditioning: perturb along u = z/√Σ and update

        Σ ← (1−α)Σ + α · mean_i |L₊ᵢ + L₋ᵢ − 2L₀| / (2μ²) · Σ ⊙ zᵢ²,

    (L the measured values, mean over the q directions). The estimate s·z/√Σ then has mean
    Σ⁻¹∇f: it is preconditioned by Σ⁻¹. On a convex quadratic with Gaussian z the fixed point
    is Σ = (d+2)/2 · diag(H), so the step is ≈ 2/(d+2) · H⁻¹∇f. Coordinates no direction
    perturbed keep their Σ; Σ ≥ ``eps``. Needs central differences and f(x) (rge,
    difference="central").

    Extra queries: 1 per step (f(x)). Extra memory: one d-vector (plus this step's z).
    """

    needs_center = True
    shapes_directions = True
    needs_values = True
    across_steps = True

    def __init__(self, alpha: float = 1e-3, eps: float = 1e-8) -> None:
        self.alpha = fraction("alpha", alpha)
        self.eps = positive("eps", eps)

    def init(self, x):
        return HizooState(torch.ones_like(x), None)

    def directions(self, u, state, ctx):
        return u / state.sigma.sqrt(), HizooState(state.sigma, u)

    def observe(self, probe: Probe, state: HizooState, ctx: Context) -> HizooState:
        if probe.f_minus is None or probe.f_center is None:
            raise InputError("hizoo() needs f(x+μu), f(x−μu) and f(x): use estimator 'rge' "
                             "with difference='central'")
        z = state.z
        if z is None or z.shape != probe.directions.shape:
            raise InputError("hizoo() must be the last module that changes directions; move "
                             "antithetic(), masks and low_rank() before it in the chain")
        curvature = (probe.f_plus + probe.f_minus - 2 * probe.f_center).abs() / (2 * ctx.mu ** 2)
        target = (curvature[:, None] * z ** 2).mean(0) * state.sigma
        sigma = ((1 - self.alpha) * state.sigma + self.alpha * target).clamp_min(self.eps)
        perturbed = (z != 0).any(0)
        return HizooState(torch.where(perturbed, sigma, state.sigma), None)


class FitnessShaping(Module):
    """Fitness shaping on the scalars: replace the values a step's differences use (f(x±μu),
    or f(x+μu) and f(x) for forward differences) by ``shape`` of them, all shaped together, and
    recompute the scalars from the shaped values with the same difference formula. Centred
    ranks make the estimate invariant to monotone changes of f (OpenAI-ES / NES); it then
    estimates the direction of ∇f, not its scale. Must come before other ``scalars`` modules.

    Extra queries: none. Extra memory: this step's probe values.
    """

    needs_values = True
    replaces_scalars = True

    def __init__(self, name: str, shape: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.name = name
        self._shape = shape

    def observe(self, probe, state, ctx):
        return probe

    def scalars(self, s, state, ctx):
        probe: Probe = state
        k = probe.f_plus.numel()
        other = probe.f_minus if probe.f_minus is not None else probe.f_center
        if other is None:
            raise InputError(f"{self.name}() shapes the values of a difference: use estimator "
                             f"'rge' or 'cge'")
        w = self._shape(torch.cat([probe.f_plus, other.reshape(-1)]))
        if probe.f_minus is not None:
            return difference_scalars(w[:k], w[k:], None, ctx.mu), None
        return difference_scalars(w[:k], None, w[k], ctx.mu), None

    def __repr__(self) -> str:
        return f"{self.name}()"


class ClipScalars(Module):
    """QZO clipping: clamp every directional-derivative estimate to [−threshold, threshold],
    bounding one direction's influence on the step.

    Extra queries: none. Extra memory: none.
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = positive("threshold", threshold)

    def scalars(self, s, state, ctx):
        return s.clamp(-self.threshold, self.threshold), state


def antithetic() -> Antithetic:
    """±u pairs (see ``Antithetic``)."""
    return Antithetic()


def orthogonal() -> Orthogonal:
    """Orthonormalised directions of norm √d (see ``Orthogonal``)."""
    return Orthogonal()


def random_mask(density: float, every: int = 1) -> RandomMask:
    """Perturb a random ``density`` share of coordinates (see ``RandomMask``)."""
    return RandomMask(density, every)


def magnitude_mask(density: float, keep: str = "small", every: int = 1) -> MagnitudeMask:
    """Perturb the smallest or largest |x| coordinates (see ``MagnitudeMask``)."""
    return MagnitudeMask(density, keep, every)


def blockwise(sizes: int | Sequence[int], order: str = "cyclic", every: int = 1) -> Blockwise:
    """Perturb one block of coordinates per step (see ``Blockwise``)."""
    return Blockwise(sizes, order, every)


def low_rank(shape: Sequence[int] | Sequence[Sequence[int]], rank: int = 4,
             refresh: int = 100) -> LowRank:
    """SubZero low-rank matrix perturbations (see ``LowRank``)."""
    return LowRank(shape, rank, refresh)


def history_subspace(k: int = 8) -> HistorySubspace:
    """Project the estimate onto the span of the last k estimates (see ``HistorySubspace``)."""
    return HistorySubspace(k)


def hizoo(alpha: float = 1e-3, eps: float = 1e-8) -> Hizoo:
    """HiZOO diagonal-Hessian preconditioning (see ``Hizoo``)."""
    return Hizoo(alpha, eps)


def centered_rank() -> FitnessShaping:
    """Centred-rank fitness shaping of the values behind the scalars (see ``FitnessShaping``)."""
    return FitnessShaping("centered_rank", centered_ranks)


def standardize() -> FitnessShaping:
    """z-score fitness shaping of the values behind the scalars (see ``FitnessShaping``)."""
    return FitnessShaping("standardize", standardized)


def clip_scalars(threshold: float) -> ClipScalars:
    """Clip directional derivatives to [−threshold, threshold] (see ``ClipScalars``)."""
    return ClipScalars(threshold)


MODULES: dict[str, Callable[..., Module]] = {
    "antithetic": antithetic,
    "orthogonal": orthogonal,
    "random-mask": random_mask,
    "magnitude-mask": magnitude_mask,
    "blockwise": blockwise,
    "low-rank": low_rank,
    "history-subspace": history_subspace,
    "hizoo": hizoo,
    "centered-rank": centered_rank,
    "standardize": standardize,
    "clip-scalars": clip_scalars,
}


def make_module(name: str, **options: Any) -> Module:
    """Build a module from its registry name (underscores accepted for hyphens) and options.

    Options set to None are dropped so each module keeps its own default.
    """
    key = str(name).replace("_", "-")
    if key not in MODULES:
        raise InputError(f"unknown module {name!r}; choose one of {', '.join(MODULES)}")
    options = {k: v for k, v in options.items() if v is not None}
    try:
        return MODULES[key](**options)
    except TypeError as err:
        raise InputError(f"bad option for module {name!r}: {err}") from None
