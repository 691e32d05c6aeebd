"""Seeded perturbation of a torch module's parameters (MeZO-style ZO fine-tuning).

A step draws q integer seeds. The direction for seed s is z = (z_t) over the perturbed tensors,
z_t the N(0, 1) noise of tensor t under s (``bbzo.blackbox.zo.noise``: chunked torch generators
keyed by a hash of (s, t, chunk), or with ``noise="table"`` slices of a shared ``NoiseTable``
at offsets hashed the same way). So z is regenerated from the seed anywhere, never stored, and
is bit-identical on every worker with the same kind of device (CPU and CUDA streams differ; a
table is the same on every device); the generator's z is independent across tensors, the
table's slices may overlap. Noise is made in chunks of ``CHUNK`` elements on the parameter's
device, on ``torch.get_num_threads()`` threads.

Exact restore without a copy of the weights: the stored parameters are **never** changed to
evaluate a perturbation. Inside ``SeededPerturbation.perturbed(seed, c)`` every perturbed
parameter is read as θ + c·z(seed) computed just in time by a ``torch.nn.utils.parametrize``
parametrization (registered by ``attached()`` and removed on exit, restoring the very same
``Parameter`` objects, their order and the state_dict keys). Reading through the attribute
rather than a forward hook also covers tied weights (GPT-2's ``lm_head``/``wte``; computed once
per perturbation and shared) and parameters read outside their owner's ``forward``. Only the
update θ ← θ − lr·(Σᵢ pgᵢ zᵢ / q + wd·θ) writes the parameters, in place, making all q seeds'
noise of a tensor in one pass. ``SeededChain`` lets modules act on this path (masks, clipping,
scalars modules, momentum/Adam/sign); the others are refused.

Why not MeZO's in-place +μz, −2μz, +μz? In floating point it does not restore θ: on a tiny
GPT-2 (float32, 39,168 parameters, μ = 1e-3) one such cycle left 18,391 elements changed
(max |Δθ| 1.2e-7); after 100 cycles 36,914 (94%, max 1.3e-6). That drift breaks replay from a
(seed, scalar) log. A copy of θ would restore exactly but doubles the memory.

Cost of a step with q seeds: 2q forwards under ``torch.no_grad`` plus 3q makings of z (two
reads and the update; each must remake z, since keeping it would cost a copy of θ). Peak
memory is inference plus one parameter-sized tensor (the largest perturbed read, or a tied
tensor's shared read) and a few chunk buffers: measured with the former generator on a
SmolLM2-135M-shaped Llama (fp32, 513 MiB of weights, batch 4×64, CPU) peak RSS 1179 MiB for a
q = 1 step against 1020 MiB for a forward and 1878 MiB for forward+backward.

Noise cost (``python bench/engine_seeded.py``, SmolLM2-135M-shaped Llama, fp32, batch 4×64,
CPU, one thread, CPU at load ~1.3): a q = 1 step makes 3 × 134.5 M = 404 M normals in 2.29 s
(177 M/s) against 2.45 s for its two forwards: noise/forwards **0.93**, down from **9.8** with
the former counter hash (460 M normals, tied tensors remade at each read, 24.0 s at 19 M/s);
the whole step takes 5.10 s. Making z at each of its 3 uses is the floor without keeping it
(a copy of θ); below ~0.9× here needs a faster generator than torch's (~4-5 ns a normal).
With ``noise="table"`` nothing is generated per step: a read is θ + μ·(table view) in one
pass and the update adds the q seeds' views chunk by chunk; taking the step's 2,127 views
costs 0.067 s (1 thread, load ~15), noise/forwards **0.03** against the 2.45 s of forwards
above. The step's remaining cost is the memory passes of the reads and the update. The
table's trade-offs (overlapping slices, 128 MiB per device) are in ``noise``.
A whole step is stored as ``StepRecord`` (q seeds, q scalars, lr, weight decay), so ``replay``
reproduces a run's weights bit for bit from the initial weights (and the run's modules).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from bbzo.blackbox.zo.modules import Antithetic, MagnitudeMask, RandomMask
from bbzo.blackbox.zo.noise import (
    CHUNK,
    SEED_BOUND,
    NoiseGenerator,
    NoiseSource,
    NoiseTable,
    check_seed,
    chunk_key,
    chunk_noise,
    for_chunks,
    noise_source,
    seeded_normal,
)
from bbzo.blackbox.zo.transforms import Context, Module, Probe, chain
from bbzo.blackbox.zo.update import Adam, Momentum, Sign
from bbzo.checks import int_at_least, non_negative, positive
from bbzo.errors import InputError, ObjectiveError

__all__ = ["CHUNK", "NoiseGenerator", "NoiseTable", "SeededChain", "SeededPerturbation",
           "SeededZO", "StepRecord", "replay", "seeded_normal", "zo_step"]

Masks = dict[int, torch.Tensor]


@dataclass(frozen=True)
class StepRecord:
    """One ZO step: everything ``replay`` needs, plus the measured losses.

    Attributes:
        seeds: q direction seeds.
        scalars: q projected gradients (L₊ − L₋)/(2μ), loss units per unit of z, as the
            chain's scalars modules returned them (what the update used).
        lr: step size used; the update is θ ← θ·(1 − lr·wd) − lr·Σᵢ scalarsᵢ zᵢ / q.
        weight_decay: decoupled-from-z L2 coefficient wd.
        loss_plus, loss_minus: the q losses at θ ± μzᵢ (not needed for replay; not saved).
    """

    seeds: tuple[int, ...]
    scalars: tuple[float, ...]
    lr: float
    weight_decay: float = 0.0
    loss_plus: tuple[float, ...] = ()
    loss_minus: tuple[float, ...] = ()

    @property
    def loss(self) -> float:
        """Estimate of the loss at the unperturbed θ: mean of all 2q measured losses."""
        losses = self.loss_plus + self.loss_minus
        return math.fsum(losses) / len(losses) if losses else math.nan

    def to_dict(self) -> dict:
        return {"seeds": list(self.seeds), "scalars": list(self.scalars), "lr": self.lr,
                "weight_decay": self.weight_decay}

    @classmethod
    def from_dict(cls, d: dict) -> StepRecord:
        return cls(tuple(check_seed(s) for s in d["seeds"]),
                   tuple(float(g) for g in d["scalars"]), float(d["lr"]),
                   float(d.get("weight_decay", 0.0)))


class _Shift(nn.Module):
    """Parametrization θ ↦ θ + c·z(seed, index) while its owner has a perturbation active."""

    def __init__(self, owner: SeededPerturbation, index: int) -> None:
        super().__init__()
        self.owner = owner
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.owner._read(self.index, x)


@dataclass(frozen=True)
class _Active:
    seed: int
    scale: float
    masks: Masks


class SeededPerturbation:
    """Seeded, copy-free perturbations and updates of a module's parameters.

    Args:
        model: the torch module; its parameters are indexed in ``named_parameters()`` order
            (tied parameters once), and that index keys the noise.
        include: ``include(name, param) -> bool`` picks the perturbed parameters; default:
            those with ``requires_grad``. Indices do not depend on the filter.
        noise: where z comes from: ``"generator"`` (default; i.i.d., per-chunk torch
            generators), ``"table"`` (slices of a shared ``NoiseTable()``) or a
            ``NoiseTable(size=..., seed=...)``; see ``bbzo.blackbox.zo.noise``.

    ``masks`` arguments map a parameter index to a flat boolean tensor of the entries to
    perturb (Sparse-MeZO); tensors absent from the map are perturbed everywhere.
    """

    def __init__(self, model: nn.Module,
                 include: Callable[[str, nn.Parameter], bool] | None = None,
                 noise: str | NoiseSource = "generator") -> None:
        self.source = noise_source(noise)
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        pick = include or (lambda _name, p: p.requires_grad)
        self.model = model
        self.entries: list[tuple[int, str, nn.Parameter]] = [
            (i, name, p) for i, (name, p) in enumerate(model.named_parameters()) if pick(name, p)]
        if not self.entries:
            raise InputError("no parameter selected to perturb; check `include` or requires_grad")
        for _, name, p in self.entries:
            if not p.is_floating_point() or not p.is_contiguous():
                raise InputError(f"parameter {name} must be a contiguous floating tensor; "
                                 f"call .contiguous() on it or leave it out with `include`")
        self._active: _Active | None = None
        self._depth = 0
        self._orders: list[tuple[nn.Module, list[str]]] = []
        self._tied: set[int] = set()                 # indices read from more than one module
        self._reads: dict[int, torch.Tensor] = {}    # this perturbation's reads of tied tensors

    @property
    def layout(self) -> list[int]:
        """[number of perturbed tensors, their total elements, sum of their indices]: a cheap
        fingerprint to check that a log is replayed on the same parameters."""
        return [len(self.entries), sum(p.numel() for _, _, p in self.entries),
                sum(i for i, _, _ in self.entries)]

    def noise(self, seed: int, index: int) -> torch.Tensor:
        """z(seed) for parameter ``index`` (unmasked): a new tensor with its shape, dtype and
        device."""
        p = self._param(index)
        return seeded_normal(seed, index, p.numel(), dtype=p.dtype, device=p.device,
                             noise=self.source).view_as(p)

    def _param(self, index: int) -> nn.Parameter:
        for i, _, p in self.entries:
            if i == index:
                return p
        raise InputError(f"parameter index {index} is not perturbed; valid: "
                         f"{[i for i, _, _ in self.entries]}")

    def _check_masks(self, masks: Masks | None) -> Masks:
        masks = masks or {}
        for index, mask in masks.items():
            p = self._param(index)
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool \
                    or mask.shape != (p.numel(),) or mask.device != p.device:
                raise InputError(f"the mask of parameter {index} must be a flat bool tensor of "
                                 f"{p.numel()} entries on {p.device}")
        return masks

    @contextmanager
    def attached(self) -> Iterator[SeededPerturbation]:
        """Register the just-in-time parametrizations (re-entrant). Inside, the model reads
        its unperturbed weights except within ``perturbed``; the state_dict keys are
        ``parametrizations.<name>.original``. On exit the original attributes come back."""
        self._depth += 1
        try:
            if self._depth == 1:
                self._attach()
            yield self
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._detach()

    def _attach(self) -> None:
        index = {id(p): i for i, _, p in self.entries}
        slots: list[int] = []
        for module in list(self.model.modules()):     # snapshot: registering adds modules
            names = [n for n, p in module._parameters.items() if p is not None and id(p) in index]
            if not names:
                continue
            self._orders.append((module, list(module._parameters)))
            for n in names:
                slots.append(index[id(module._parameters[n])])
                parametrize.register_parametrization(
                    module, n, _Shift(self, slots[-1]), unsafe=True)
        self._tied = {i for i in slots if slots.count(i) > 1}

    def _detach(self) -> None:
        while self._orders:
            module, order = self._orders.pop()
            for n in order:
                if parametrize.is_parametrized(module, n):
                    parametrize.remove_parametrizations(module, n, leave_parametrized=False)
            for n in order:                                   # restore the original key order
                module._parameters[n] = module._parameters.pop(n)

    @contextmanager
    def perturbed(self, seed: int, scale: float, masks: Masks | None = None) -> Iterator[None]:
        """Within this block the model computes with θ + scale·(z(seed) ⊙ mask) (no autograd
        graph through the shift); θ itself is not modified. A tied tensor is computed once
        and its read shared (one tensor of its size held until the block ends)."""
        seed = check_seed(seed)
        scale = float(scale)
        if not math.isfinite(scale):
            raise InputError(f"scale must be a finite number, got {scale!r}")
        masks = self._check_masks(masks)
        if self._active is not None:
            raise InputError("a perturbation is already active; perturbations do not nest")
        with self.attached():
            self._active = _Active(seed, scale, masks)
            try:
                yield
            finally:
                self._active = None
                self._reads.clear()

    def _read(self, index: int, x: torch.Tensor) -> torch.Tensor:
        active = self._active
        if active is None:
            return x
        if index in self._reads:
            return self._reads[index]
        mask = active.masks.get(index)
        with torch.no_grad():
            out = torch.empty_like(x, memory_format=torch.contiguous_format)
            flat, dest = x.detach().view(-1), out.view(-1)

            def fill(chunk: int, start: int, stop: int) -> None:
                self.source.shift(flat[start:stop], active.seed, index, chunk, active.scale,
                                  None if mask is None else mask[start:stop], dest[start:stop])

            for_chunks(x.numel(), fill)
        if index in self._tied:
            self._reads[index] = out
        return out

    def direction(self, index: int, seeds: Sequence[int], weights: Sequence[float],
                  mask: torch.Tensor | None = None) -> torch.Tensor:
        """Σᵢ weightsᵢ·z(seedsᵢ) ⊙ mask for parameter ``index``, its shape and dtype: all the
        seeds' noise made in one pass over the tensor."""
        p = self._param(index)
        out = torch.empty(p.numel(), dtype=p.dtype, device=p.device)

        def fill(chunk: int, start: int, stop: int) -> None:
            self.source.combine(seeds, weights, index, chunk,
                                None if mask is None else mask[start:stop], out[start:stop])

        for_chunks(p.numel(), fill)
        return out.view_as(p)

    def apply_update(self, seeds: Sequence[int], scalars: Sequence[float], lr: float,
                     weight_decay: float = 0.0, masks: Masks | None = None,
                     transform: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
                     ) -> None:
        """θ ← θ·(1 − lr·wd) − lr·T(Σᵢ scalarsᵢ·z(seedsᵢ) ⊙ mask / q), in place, tensor by
        tensor; T is ``transform(index, estimate)`` (the identity by default). Weight decay
        acts on every perturbed entry, masked or not."""
        seeds = [check_seed(s) for s in seeds]
        scalars = [float(g) for g in scalars]
        if not seeds or len(seeds) != len(scalars):
            raise InputError(f"need as many scalars as seeds (at least one), got {len(seeds)} "
                             f"seeds and {len(scalars)} scalars")
        lr = non_negative("lr", lr)
        weight_decay = non_negative("weight_decay", weight_decay)
        weights = [g / len(seeds) for g in scalars]
        masks = self._check_masks(masks)
        with torch.no_grad():
            in_place = transform is None and isinstance(self.source, NoiseTable)
            for index, _, p in self.entries:
                step = None if in_place else self.direction(index, seeds, weights,
                                                            masks.get(index))
                if step is not None and transform is not None:
                    step = transform(index, step)
                if weight_decay:
                    p.mul_(1.0 - lr * weight_decay)
                if step is None:
                    self._add_noise(index, p, seeds, weights, masks.get(index), -lr)
                else:
                    p.add_(step, alpha=-lr)

    def _add_noise(self, index: int, p: torch.Tensor, seeds: Sequence[int],
                   weights: Sequence[float], mask: torch.Tensor | None, alpha: float) -> None:
        """p += alpha·Σᵢ weightsᵢ·z(seedsᵢ) ⊙ mask in place, the table's views added chunk by
        chunk (no tensor of p's size is made). The generator keeps its former update, the
        direction then one add, so its numbers do not change."""
        flat = p.detach().view(-1)

        def fill(chunk: int, start: int, stop: int) -> None:
            self.source.add_into(flat[start:stop], seeds, weights, index, chunk,
                                 None if mask is None else mask[start:stop], alpha)

        for_chunks(p.numel(), fill)


def _as_perturbation(model: nn.Module | SeededPerturbation,
                     noise: str | NoiseSource | None = None) -> SeededPerturbation:
    """``model`` itself, or a new perturbation of all its ``requires_grad`` parameters;
    ``noise`` (None: the perturbation's own) must match its source."""
    if not isinstance(model, SeededPerturbation):
        return SeededPerturbation(model, noise="generator" if noise is None else noise)
    if noise is not None and noise_source(noise) != model.source:
        raise InputError(f"noise {noise_source(noise).config} differs from this "
                         f"SeededPerturbation's {model.source.config}; build it with that "
                         f"noise or leave noise out")
    return model


_MASKS = (RandomMask, MagnitudeMask)
_UPDATE_RULES = (Momentum, Adam, Sign)
_VECTOR_HOOKS = ("directions", "gradient", "update")


def _acts_on_values_only(m: Module) -> bool:
    """Acts at the ``scalars`` stage (and maybe ``observe``), never on a d-vector."""
    return (type(m).scalars is not Module.scalars and not m.needs_center
            and not m.shapes_directions
            and all(getattr(type(m), h, None) is getattr(Module, h, None) for h in _VECTOR_HOOKS))


def _flatten(modules: Module | Sequence[Module]) -> tuple[Module, ...]:
    return chain(*((modules,) if isinstance(modules, Module) else modules)).modules


class SeededChain:
    """A module chain (``bbzo.blackbox.zo.modules``/``update``) acting on the seeded path, with
    its state. Parameters are never flattened, so only these modules can act here:

    - ``antithetic()``: accepted, changes nothing: a seeded step already is the central
      (antithetic-pair) form, L(θ ± μz) for each seed.
    - modules acting on values only (``scalars``, maybe ``observe``: ``clip_scalars``,
      ``centered_rank``, ``standardize``): ``observe`` gets a ``Probe`` of the q losses L±
      (directions None), then ``scalars`` the (q,) (L₊ − L₋)/(2μ); ``init`` gets an empty x,
      ``ctx.x`` is None. The log keeps the scalars they return, so replay does not call them.
      One that maps any single scalar to 0 needs q ≥ 2 (centred ranks at q = 1 give
      ±1/(2μ), a sign step, and are accepted).
    - ``random_mask``/``magnitude_mask``: per tensor; a random mask keeps each entry with
      probability ``density``, drawn from the first seed of the step it is (re)drawn at (in
      the log); a magnitude mask keeps the ``density`` share (at least one) of smallest or
      largest |θ|, which replay recomputes from its θ, bit-identical to the run's. Redrawn
      every ``every`` steps. Memory: one byte per perturbed entry.
    - ``momentum``/``adam``/``sign``: applied per tensor to the estimate, with per-parameter
      buffers (momentum: one copy of the perturbed parameters, Adam: two). The buffers are a
      deterministic function of the logged seeds and scalars, so ``replay`` rebuilds them.

    Anything else raises InputError. The state (step count, masks, buffers) advances with
    each ``update``; pass the same chain to every ``zo_step`` of a run, or use ``SeededZO``.
    """

    def __init__(self, perturbation: SeededPerturbation,
                 modules: Module | Sequence[Module] = ()) -> None:
        self.perturbation = perturbation
        self.modules = _flatten(modules)
        self.scalar_modules: list[Module] = []
        self.mask_modules: list[RandomMask | MagnitudeMask] = []
        self.update_rules: list[Module] = []
        for m in self.modules:
            if type(m) in _MASKS:
                self.mask_modules.append(m)
            elif type(m) in _UPDATE_RULES:
                self.update_rules.append(m)
            elif _acts_on_values_only(m):
                self.scalar_modules.append(m)
            elif type(m) is not Antithetic:
                raise InputError(f"{m!r} cannot act on the seeded path; use antithetic, "
                                 f"scalars-only modules, random/magnitude masks, momentum, "
                                 f"adam or sign there")
        self.step = 0
        self._scalar_states = [m.init(torch.empty(0)) for m in self.scalar_modules]
        self._drawn: list[tuple[int, Masks] | None] = [None] * len(self.mask_modules)
        self._rule_states: list[dict[int, Any]] = [{} for _ in self.update_rules]
        self.masks: Masks = {}

    @property
    def config(self) -> list[str]:
        """The modules as text: what a log must match to be replayed."""
        return [repr(m) for m in self.modules]

    def _context(self, x: torch.Tensor | None, seeds: Sequence[int], mu: float) -> Context:
        gen = torch.Generator().manual_seed(chunk_key("uniform", seeds[0], self.step, 1 << 63))
        return Context(x, self.step, gen, mu)  # type: ignore[arg-type]  # no flat θ here

    def check(self, q: int, mu: float) -> None:
        """Refuse a q that makes a scalars module meaningless (it zeroes any single scalar)."""
        if q > 1 or not self.scalar_modules:
            return
        probes = [((1.0,), (0.0,)), ((0.0,), (1.0,))]
        if all(self._shaped(plus, minus, [0], mu, dry=True) == (0.0,) for plus, minus in probes):
            raise InputError(f"{self.config} map a single scalar to 0, so a q = 1 seeded step "
                             f"would never move; use q >= 2")

    def prepare(self, seeds: Sequence[int]) -> Masks:
        """Redraw the masks due at this step (random ones from ``seeds[0]``); returns the
        per-tensor masks of the step (all masks of the chain combined by AND)."""
        if not self.mask_modules:
            return self.masks
        for k, m in enumerate(self.mask_modules):
            drawn = self._drawn[k]
            if drawn is None or self.step - drawn[0] >= m.every:
                self._drawn[k] = (self.step, self._draw(k, m, seeds[0]))
        combined: Masks = {}
        for drawn in self._drawn:
            for index, mask in drawn[1].items():
                combined[index] = mask if index not in combined else combined[index] & mask
        self.masks = combined
        return combined

    def _draw(self, k: int, m: RandomMask | MagnitudeMask, seed: int) -> Masks:
        masks = {}
        for index, _, p in self.perturbation.entries:
            if isinstance(m, RandomMask):      # seed + k: two random masks differ
                masks[index] = _random_mask((seed + k) % SEED_BOUND, index, p, m.density)
            else:
                size = p.detach().view(-1).abs()
                keep = torch.topk(size, max(1, round(m.density * size.numel())),
                                  largest=m.keep == "large", sorted=False).indices
                masks[index] = torch.zeros_like(size, dtype=torch.bool)
                masks[index][keep] = True
        return masks

    def scalars(self, plus: Sequence[float], minus: Sequence[float], seeds: Sequence[int],
                mu: float) -> tuple[float, ...]:
        """The (q,) projected gradients (L₊ − L₋)/(2μ) through the values-only modules: each
        ``observe``s a ``Probe`` of the q losses (its directions None: z is never
        materialised), then their ``scalars`` run in order."""
        return self._shaped(plus, minus, seeds, mu, dry=False)

    def _shaped(self, plus: Sequence[float], minus: Sequence[float], seeds: Sequence[int],
                mu: float, dry: bool) -> tuple[float, ...]:
        f_plus = torch.tensor(list(plus), dtype=torch.float64)
        f_minus = torch.tensor(list(minus), dtype=torch.float64)
        s = (f_plus - f_minus) / (2.0 * mu)
        if not self.scalar_modules:
            return tuple(float(v) for v in s)
        ctx = self._context(None, seeds, mu)
        probe = Probe(None, f_plus, f_minus, None)  # type: ignore[arg-type]
        states = [m.observe(probe, st, ctx)
                  for m, st in zip(self.scalar_modules, self._scalar_states, strict=True)]
        for k, m in enumerate(self.scalar_modules):
            s, states[k] = m.scalars(s, states[k], ctx)
        if not dry:
            self._scalar_states = states
        return tuple(float(v) for v in s)

    def _rules(self, index: int, estimate: torch.Tensor) -> torch.Tensor:
        g = estimate.view(-1)
        ctx = Context(g, self.step, torch.Generator(), math.nan)  # the rules read no ctx
        for k, m in enumerate(self.update_rules):
            states = self._rule_states[k]
            g, states[index] = m.update(g, states[index] if index in states else m.init(g),
                                             ctx)
        return g.view_as(estimate)

    def update(self, seeds: Sequence[int], scalars: Sequence[float], lr: float,
               weight_decay: float = 0.0) -> None:
        """Apply the step's update with this step's masks and update rules; advance a step."""
        self.perturbation.apply_update(seeds, scalars, lr, weight_decay, self.masks,
                                       self._rules if self.update_rules else None)
        self.step += 1


def _random_mask(seed: int, index: int, p: torch.Tensor, density: float) -> torch.Tensor:
    """Flat boolean mask of tensor ``index`` keeping each entry with probability ``density``
    (its uniform stream under ``seed``)."""
    mask = torch.empty(p.numel(), dtype=torch.bool, device=p.device)

    def fill(chunk: int, start: int, stop: int) -> None:
        u = chunk_noise("uniform", seed, index, chunk, stop - start, p.device)
        torch.lt(u, density, out=mask[start:stop])

    for_chunks(p.numel(), fill)
    return mask


def _as_chain(pert: SeededPerturbation, modules: Module | Sequence[Module] | SeededChain
              ) -> SeededChain:
    if not isinstance(modules, SeededChain):
        return SeededChain(pert, modules)
    if modules.perturbation is not pert:
        raise InputError("this SeededChain was built for another SeededPerturbation; build "
                         "it on the one passed as model")
    return modules


def _measure(loss_fn: Callable[[], Any]) -> float:
    value = float(loss_fn())
    if not math.isfinite(value):
        raise ObjectiveError(f"loss_fn returned {value} at a perturbed point; the weights were "
                             f"not updated (lower mu, or check the loss)")
    return value


def zo_step(model: nn.Module | SeededPerturbation, loss_fn: Callable[[], Any], *,
            mu: float = 1e-3, lr: float = 1e-7, q: int = 1,
            rng: np.random.Generator | int | None = None, weight_decay: float = 0.0,
            modules: Module | Sequence[Module] | SeededChain = (),
            noise: str | NoiseSource | None = None) -> StepRecord:
    """One MeZO step with q ≥ 1 seeds, averaging the q projected gradients.

    For each seed sᵢ: L± = loss_fn() at θ ± μ·z(sᵢ) (2q forwards, under ``torch.no_grad``),
    pgᵢ = (L₊ − L₋)/(2μ); then θ ← θ·(1 − lr·wd) − lr·Σᵢ pgᵢ z(sᵢ)/q in place (z masked and
    the pgᵢ and the estimate transformed by ``modules``).

    Args:
        model: module (all ``requires_grad`` parameters) or a ``SeededPerturbation``.
        loss_fn: () -> scalar loss (float or 0-d tensor) of the model as it reads now; keep it
            deterministic (eval mode, fixed batch) so L₊ and L₋ differ only by the weights.
        mu: perturbation scale μ (weight units per unit of z). MeZO: 1e-3.
        lr: step size. MeZO: 1e-7 for full-parameter tuning of LLMs.
        q: seeds per step.
        rng: numpy Generator or int seed the q seeds are drawn from, uniform in [0, 2**32).
        weight_decay: L2 coefficient wd applied to the perturbed parameters.
        modules: a module, a sequence or chain of them (see ``SeededChain`` for those that act
            here), or a ``SeededChain`` on ``model`` whose state carries over between calls.
        noise: the noise source (``SeededPerturbation``'s ``noise``); None: the given
            perturbation's, or ``"generator"`` for a module.
    """
    pert = _as_perturbation(model, noise)
    mu = positive("mu", mu)
    non_negative("lr", lr)
    non_negative("weight_decay", weight_decay)
    q = int_at_least("q", q, 1)
    steps = _as_chain(pert, modules)
    steps.check(q, mu)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    seeds = tuple(int(s) for s in gen.integers(0, 1 << 32, size=q, dtype=np.uint64))
    masks = steps.prepare(seeds)
    plus, minus = [], []
    with torch.no_grad(), pert.attached():
        for seed in seeds:
            with pert.perturbed(seed, mu, masks):
                plus.append(_measure(loss_fn))
            with pert.perturbed(seed, -mu, masks):
                minus.append(_measure(loss_fn))
    scalars = steps.scalars(plus, minus, seeds, mu)
    steps.update(seeds, scalars, lr, weight_decay)
    return StepRecord(seeds, scalars, lr, weight_decay, tuple(plus), tuple(minus))


def replay(model: nn.Module | SeededPerturbation, records: Sequence[StepRecord],
           modules: Module | Sequence[Module] | SeededChain = (),
           noise: str | NoiseSource | None = None) -> None:
    """Apply logged steps in order; from the run's initial weights (and a fresh chain of the
    run's modules) this reproduces its final weights exactly (same dtype and device kind, same
    ``include`` filter, same ``noise`` source as ``zo_step``'s)."""
    pert = _as_perturbation(model, noise)
    steps = _as_chain(pert, modules)
    for r in records:
        steps.prepare(r.seeds)
        steps.update(r.seeds, r.scalars, r.lr, r.weight_decay)


class SeededZO:
    """MeZO optimiser keeping a replayable log, saved as JSON (~90 bytes a step at q = 1,
    ~30 more per extra seed).

    Step n draws its seeds from ``numpy.random.default_rng([seed, n])``, so a loaded run
    continues with the seeds it would have drawn. ``lr`` may be changed between steps (it is
    logged per step). ``modules`` act as described in ``SeededChain``; the log records them
    and ``load`` refuses other ones. ``noise`` is ``SeededPerturbation``'s; the log records
    the source (and a table's size and seed), and ``load`` rebuilds it.
    """

    FORMAT = "bbzo.seeded-zo/2"      # /2: chunked torch-generator noise (/1: counter hash);
    #                                  a /2 log without "noise" was made with the generator

    def __init__(self, model: nn.Module, *, lr: float = 1e-7, mu: float = 1e-3, q: int = 1,
                 weight_decay: float = 0.0, seed: int = 0,
                 include: Callable[[str, nn.Parameter], bool] | None = None,
                 modules: Module | Sequence[Module] = (),
                 noise: str | NoiseSource = "generator") -> None:
        self.perturbation = SeededPerturbation(model, include, noise)
        self.lr = non_negative("lr", lr)
        self.mu = positive("mu", mu)
        self.q = int_at_least("q", q, 1)
        self.weight_decay = non_negative("weight_decay", weight_decay)
        self.seed = check_seed(seed)
        self.chain = SeededChain(self.perturbation, modules)
        self.chain.check(self.q, self.mu)
        self.log: list[StepRecord] = []

    def step(self, loss_fn: Callable[[], Any]) -> StepRecord:
        """One ``zo_step``; returns and logs its record."""
        record = zo_step(self.perturbation, loss_fn, mu=self.mu, lr=self.lr, q=self.q,
                         rng=np.random.default_rng([self.seed, len(self.log)]),
                         weight_decay=self.weight_decay, modules=self.chain)
        self.log.append(record)
        return record

    def save(self, path: str | Path) -> None:
        """Write the hyper-parameters, modules, parameter layout and step log as JSON."""
        doc = {"format": self.FORMAT, "layout": self.perturbation.layout, "seed": self.seed,
               "mu": self.mu, "q": self.q, "lr": self.lr, "weight_decay": self.weight_decay,
               "modules": self.chain.config, "noise": self.perturbation.source.config,
               "steps": [r.to_dict() for r in self.log]}
        Path(path).write_text(json.dumps(doc, separators=(",", ":")))

    @classmethod
    def load(cls, path: str | Path, model: nn.Module,
             include: Callable[[str, nn.Parameter], bool] | None = None,
             modules: Module | Sequence[Module] = (),
             noise: str | NoiseSource | None = None) -> SeededZO:
        """Rebuild a saved run on ``model``, which must hold the run's initial weights, with
        the run's ``modules``: the log is replayed onto it with the run's noise source
        (``noise``, if given, must be that one), and ``step`` continues where the run
        stopped."""
        doc = json.loads(Path(path).read_text())
        if doc.get("format") != cls.FORMAT:
            old = str(doc.get("format", "")).startswith("bbzo.seeded-zo/")
            why = " (an older noise generator; it cannot be replayed now)" if old else ""
            raise InputError(f"{path} is not a {cls.FORMAT} log: format "
                             f"{doc.get('format')!r}{why}")
        logged = noise_source(doc.get("noise", {"source": "generator"}))
        if noise is not None and noise_source(noise) != logged:
            raise InputError(f"{path} was recorded with noise {logged.config}, got "
                             f"{noise_source(noise).config}; leave noise out to use the log's")
        opt = cls(model, lr=doc["lr"], mu=doc["mu"], q=doc["q"],
                  weight_decay=doc["weight_decay"], seed=doc["seed"], include=include,
                  modules=modules, noise=logged)
        if opt.perturbation.layout != doc["layout"]:
            raise InputError(f"{path} was recorded on parameters with layout {doc['layout']}, "
                             f"this model has {opt.perturbation.layout}; use the same model "
                             f"and `include`")
        if opt.chain.config != doc["modules"]:
            raise InputError(f"{path} was recorded with modules {doc['modules']}, got "
                             f"{opt.chain.config}; pass the run's modules to load")
        opt.log = [StepRecord.from_dict(d) for d in doc["steps"]]
        replay(opt.perturbation, opt.log, opt.chain)
        return opt
