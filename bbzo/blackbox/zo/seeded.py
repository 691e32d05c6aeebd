"""Seeded perturbation of a torch module's parameters (MeZO-style ZO fine-tuning).

A step draws q integer seeds. The direction for seed s is z = (z_t) over the perturbed tensors,
with element k of tensor t a pure function F(s, t, k): a counter-based hash (our own 32-bit
integer mixer in int64 torch ops) turned into N(0, 1) by Box–Muller. So z is regenerated from
the seed anywhere, never stored, is independent across tensors, and is the same on every worker
(bit-identical on the same kind of device; CPU vs GPU may differ in the last ulp of log/cos).
Noise is made in chunks of ``CHUNK`` elements on the parameter's device, so the transient
memory is one chunk plus, during a perturbed read, one parameter-sized tensor.

Exact restore without a copy of the weights: the stored parameters are **never** changed to
evaluate a perturbation. Inside ``SeededPerturbation.perturbed(seed, c)`` every perturbed
parameter is read as θ + c·z(seed) computed just in time by a ``torch.nn.utils.parametrize``
parametrization (registered by ``attached()`` and removed on exit, restoring the very same
``Parameter`` objects, their order and the state_dict keys). Reading through the attribute
rather than a forward hook also covers tied weights (GPT-2's ``lm_head``/``wte``) and parameters
read outside their owner's ``forward``. Only the update θ ← θ − lr·(Σᵢ pgᵢ zᵢ / q + wd·θ) writes
the parameters, in place, regenerating each zᵢ from its seed.

Why not MeZO's in-place +μz, −2μz, +μz? In floating point it does not restore θ: on a tiny
GPT-2 (float32, 39,168 parameters, μ = 1e-3) one such cycle left 18,391 elements changed
(max |Δθ| 1.2e-7); after 100 cycles 36,914 (94%, max 1.3e-6). That drift breaks replay from a
(seed, scalar) log. A copy of θ would restore exactly but doubles the memory.

Cost of a step with q seeds: 2q forwards under ``torch.no_grad`` plus 3q regenerations of z
(tied tensors are regenerated at each read). Peak memory is inference plus one parameter-sized
tensor (the largest perturbed read) and a few chunk buffers: measured on a SmolLM2-135M-shaped
Llama (fp32, 513 MiB of weights, batch 4×64, CPU) peak RSS 1179 MiB for a q = 1 step against
1020 MiB for a forward and 1878 MiB for forward+backward. On CPU the hash runs at ~20M
normals/s per thread, so there noise, not the forwards, dominates a step (23.7 s vs 4.7 s).
A whole step is stored as ``StepRecord`` (q seeds, q scalars, lr, weight decay), so ``replay``
reproduces a run's weights bit for bit from the initial weights.
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

from bbzo.checks import int_at_least, non_negative, positive
from bbzo.errors import InputError, ObjectiveError

CHUNK = 1 << 20                  # elements of noise made at once (even; divides 2**33)
SEED_BOUND = 1 << 64             # seeds are integers in [0, 2**64)
_M32 = 0xFFFFFFFF
# xorshift-multiply mixer; odd multipliers below 2**31, so x < 2**32 times either stays below
# 2**63 and int64 products never overflow (values stay non-negative, so >> is logical).
# Avalanche bias measured at sampling noise (max |P(flip) − ½| 0.007 at 2**16 inputs).
_C1, _C2 = 0x21F0AAAD, 0x735A2D97
_GOLDEN = 0x9E3779B9


def _mix(x: Any) -> Any:
    """Bijective 32-bit mixing hash of values in [0, 2**32): Python ints or int64 tensors."""
    x = x ^ (x >> 16)
    x = (x * _C1) & _M32
    x = x ^ (x >> 15)
    x = (x * _C2) & _M32
    return x ^ (x >> 15)


def _fold(*words: int) -> int:
    """Hash 32-bit words into one 32-bit key (xor each in, then mix)."""
    h = _GOLDEN
    for w in words:
        h = _mix(h ^ w)
    return h


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= int(seed) < SEED_BOUND:
        raise InputError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def _normal_chunks(seed: int, index: int, numel: int, dtype: torch.dtype,
                   device: torch.device | str) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start, z) with z = F(seed, index, start:start+len(z)), N(0, 1), 1-D.

    Elements 2j and 2j+1 are the cosine and sine outputs of Box–Muller on the hashed pair
    counter j. Computed in float64 for float64 ``dtype``, else in float32, then cast.
    """
    work = torch.float64 if dtype == torch.float64 else torch.float32
    stream = _fold(seed & _M32, seed >> 32, index & _M32, index >> 32)
    for start in range(0, numel, CHUNK):
        n = min(CHUNK, numel - start)
        pair0 = start // 2                                   # high 32 bits fixed in a chunk
        k1, k2, k3 = (_fold(stream, pair0 >> 32, i) for i in (1, 2, 3))
        j = torch.arange(pair0 & _M32, (pair0 & _M32) + (n + 1) // 2, dtype=torch.int64,
                         device=device)
        a = _mix(_mix(j ^ k1) ^ k2)
        b = _mix(a ^ k3)
        # u1 = (a + 1) / 2**32 in (0, 1]; take log(u1) from whichever of u1, 1 − u1 is small
        # so float32 keeps full relative precision at both ends.
        low = a < (1 << 31)
        small = torch.where(low, a + 1, _M32 - a).to(work) * 2.0 ** -32
        log_u1 = torch.where(low, torch.log(small), torch.log1p(-small))
        radius = torch.sqrt(-2.0 * log_u1)
        angle = b.to(work) * (2.0 * math.pi * 2.0 ** -32)
        z = torch.empty(angle.numel(), 2, dtype=work, device=device)
        torch.cos(angle, out=z[:, 0])
        torch.sin(angle, out=z[:, 1])
        yield start, z.mul_(radius[:, None]).view(-1)[:n].to(dtype)


def seeded_normal(seed: int, index: int, numel: int, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """The (numel,) N(0, 1) noise of tensor ``index`` under ``seed``; element k is F(seed,
    index, k), so a longer request extends a shorter one."""
    seed = _check_seed(seed)
    index = int_at_least("index", index, 0)
    numel = int_at_least("numel", numel, 0)
    out = torch.empty(numel, dtype=dtype, device=device)
    for start, z in _normal_chunks(seed, index, numel, dtype, device):
        out[start:start + z.numel()] = z
    return out


@dataclass(frozen=True)
class StepRecord:
    """One ZO step: everything ``replay`` needs, plus the measured losses.

    Attributes:
        seeds: q direction seeds.
        scalars: q projected gradients (L₊ − L₋)/(2μ), loss units per unit of z.
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
        return cls(tuple(_check_seed(s) for s in d["seeds"]),
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


class SeededPerturbation:
    """Seeded, copy-free perturbations and updates of a module's parameters.

    Args:
        model: the torch module; its parameters are indexed in ``named_parameters()`` order
            (tied parameters once), and that index keys the noise.
        include: ``include(name, param) -> bool`` picks the perturbed parameters; default:
            those with ``requires_grad``. Indices do not depend on the filter.
    """

    def __init__(self, model: nn.Module,
                 include: Callable[[str, nn.Parameter], bool] | None = None) -> None:
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
        self._active: tuple[int, float] | None = None
        self._depth = 0
        self._orders: list[tuple[nn.Module, list[str]]] = []

    @property
    def layout(self) -> list[int]:
        """[number of perturbed tensors, their total elements, sum of their indices]: a cheap
        fingerprint to check that a log is replayed on the same parameters."""
        return [len(self.entries), sum(p.numel() for _, _, p in self.entries),
                sum(i for i, _, _ in self.entries)]

    def noise(self, seed: int, index: int) -> torch.Tensor:
        """z(seed) for parameter ``index``: a new tensor with its shape, dtype and device."""
        p = self._param(index)
        return seeded_normal(seed, index, p.numel(), dtype=p.dtype, device=p.device).view_as(p)

    def _param(self, index: int) -> nn.Parameter:
        for i, _, p in self.entries:
            if i == index:
                return p
        raise InputError(f"parameter index {index} is not perturbed; valid: "
                         f"{[i for i, _, _ in self.entries]}")

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
        for module in list(self.model.modules()):     # snapshot: registering adds modules
            names = [n for n, p in module._parameters.items() if p is not None and id(p) in index]
            if not names:
                continue
            self._orders.append((module, list(module._parameters)))
            for n in names:
                parametrize.register_parametrization(
                    module, n, _Shift(self, index[id(module._parameters[n])]), unsafe=True)

    def _detach(self) -> None:
        while self._orders:
            module, order = self._orders.pop()
            for n in order:
                if parametrize.is_parametrized(module, n):
                    parametrize.remove_parametrizations(module, n, leave_parametrized=False)
            for n in order:                                   # restore the original key order
                module._parameters[n] = module._parameters.pop(n)

    @contextmanager
    def perturbed(self, seed: int, scale: float) -> Iterator[None]:
        """Within this block the model computes with θ + scale·z(seed) (no autograd graph
        through the shift); θ itself is not modified."""
        seed = _check_seed(seed)
        scale = float(scale)
        if not math.isfinite(scale):
            raise InputError(f"scale must be a finite number, got {scale!r}")
        if self._active is not None:
            raise InputError("a perturbation is already active; perturbations do not nest")
        with self.attached():
            self._active = (seed, scale)
            try:
                yield
            finally:
                self._active = None

    def _read(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if self._active is None:
            return x
        seed, scale = self._active
        with torch.no_grad():
            out = torch.empty_like(x, memory_format=torch.contiguous_format)
            flat, dest = x.detach().view(-1), out.view(-1)
            for start, z in _normal_chunks(seed, index, x.numel(), x.dtype, x.device):
                stop = start + z.numel()
                torch.add(flat[start:stop], z, alpha=scale, out=dest[start:stop])
        return out

    def apply_update(self, seeds: Sequence[int], scalars: Sequence[float], lr: float,
                     weight_decay: float = 0.0) -> None:
        """θ ← θ·(1 − lr·wd) − lr·Σᵢ scalarsᵢ·z(seedsᵢ)/q, in place, tensor by tensor."""
        seeds = [_check_seed(s) for s in seeds]
        scalars = [float(g) for g in scalars]
        if not seeds or len(seeds) != len(scalars):
            raise InputError(f"need as many scalars as seeds (at least one), got {len(seeds)} "
                             f"seeds and {len(scalars)} scalars")
        lr = non_negative("lr", lr)
        weight_decay = non_negative("weight_decay", weight_decay)
        q = len(seeds)
        with torch.no_grad():
            for index, _, p in self.entries:
                flat = p.detach().view(-1)
                if weight_decay:
                    flat.mul_(1.0 - lr * weight_decay)
                for seed, g in zip(seeds, scalars, strict=True):
                    for start, z in _normal_chunks(seed, index, flat.numel(), p.dtype, p.device):
                        flat[start:start + z.numel()].add_(z, alpha=-lr * g / q)


def _as_perturbation(model: nn.Module | SeededPerturbation) -> SeededPerturbation:
    return model if isinstance(model, SeededPerturbation) else SeededPerturbation(model)


def _measure(loss_fn: Callable[[], Any]) -> float:
    value = float(loss_fn())
    if not math.isfinite(value):
        raise ObjectiveError(f"loss_fn returned {value} at a perturbed point; the weights were "
                             f"not updated (lower mu, or check the loss)")
    return value


def zo_step(model: nn.Module | SeededPerturbation, loss_fn: Callable[[], Any], *,
            mu: float = 1e-3, lr: float = 1e-7, q: int = 1,
            rng: np.random.Generator | int | None = None,
            weight_decay: float = 0.0) -> StepRecord:
    """One MeZO step with q ≥ 1 seeds, averaging the q projected gradients.

    For each seed sᵢ: L± = loss_fn() at θ ± μ·z(sᵢ) (2q forwards, under ``torch.no_grad``),
    pgᵢ = (L₊ − L₋)/(2μ); then θ ← θ·(1 − lr·wd) − lr·Σᵢ pgᵢ z(sᵢ)/q in place.

    Args:
        model: module (all ``requires_grad`` parameters) or a ``SeededPerturbation``.
        loss_fn: () -> scalar loss (float or 0-d tensor) of the model as it reads now; keep it
            deterministic (eval mode, fixed batch) so L₊ and L₋ differ only by the weights.
        mu: perturbation scale μ (weight units per unit of z). MeZO: 1e-3.
        lr: step size. MeZO: 1e-7 for full-parameter tuning of LLMs.
        q: seeds per step.
        rng: numpy Generator or int seed the q seeds are drawn from, uniform in [0, 2**32).
        weight_decay: L2 coefficient wd applied to the perturbed parameters.
    """
    pert = _as_perturbation(model)
    mu = positive("mu", mu)
    non_negative("lr", lr)
    non_negative("weight_decay", weight_decay)
    q = int_at_least("q", q, 1)
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    seeds = tuple(int(s) for s in gen.integers(0, 1 << 32, size=q, dtype=np.uint64))
    plus, minus = [], []
    with torch.no_grad(), pert.attached():
        for seed in seeds:
            with pert.perturbed(seed, mu):
                plus.append(_measure(loss_fn))
            with pert.perturbed(seed, -mu):
                minus.append(_measure(loss_fn))
    scalars = tuple((lp - lm) / (2.0 * mu) for lp, lm in zip(plus, minus, strict=True))
    pert.apply_update(seeds, scalars, lr, weight_decay)
    return StepRecord(seeds, scalars, lr, weight_decay, tuple(plus), tuple(minus))


def replay(model: nn.Module | SeededPerturbation, records: Sequence[StepRecord]) -> None:
    """Apply logged steps in order; from the run's initial weights this reproduces its final
    weights exactly (same dtype and device kind, same ``include`` filter)."""
    pert = _as_perturbation(model)
    for r in records:
        pert.apply_update(r.seeds, r.scalars, r.lr, r.weight_decay)


class SeededZO:
    """MeZO optimiser keeping a replayable log, saved as JSON (~90 bytes a step at q = 1,
    ~30 more per extra seed).

    Step n draws its seeds from ``numpy.random.default_rng([seed, n])``, so a loaded run
    continues with the seeds it would have drawn. ``lr`` may be changed between steps (it is
    logged per step).
    """

    FORMAT = "bbzo.seeded-zo/1"

    def __init__(self, model: nn.Module, *, lr: float = 1e-7, mu: float = 1e-3, q: int = 1,
                 weight_decay: float = 0.0, seed: int = 0,
                 include: Callable[[str, nn.Parameter], bool] | None = None) -> None:
        self.perturbation = SeededPerturbation(model, include)
        self.lr = non_negative("lr", lr)
        self.mu = positive("mu", mu)
        self.q = int_at_least("q", q, 1)
        self.weight_decay = non_negative("weight_decay", weight_decay)
        self.seed = _check_seed(seed)
        self.log: list[StepRecord] = []

    def step(self, loss_fn: Callable[[], Any]) -> StepRecord:
        """One ``zo_step``; returns and logs its record."""
        record = zo_step(self.perturbation, loss_fn, mu=self.mu, lr=self.lr, q=self.q,
                         rng=np.random.default_rng([self.seed, len(self.log)]),
                         weight_decay=self.weight_decay)
        self.log.append(record)
        return record

    def save(self, path: str | Path) -> None:
        """Write the hyper-parameters, the parameter layout and the step log as JSON."""
        doc = {"format": self.FORMAT, "layout": self.perturbation.layout, "seed": self.seed,
               "mu": self.mu, "q": self.q, "lr": self.lr, "weight_decay": self.weight_decay,
               "steps": [r.to_dict() for r in self.log]}
        Path(path).write_text(json.dumps(doc, separators=(",", ":")))

    @classmethod
    def load(cls, path: str | Path, model: nn.Module,
             include: Callable[[str, nn.Parameter], bool] | None = None) -> SeededZO:
        """Rebuild a saved run on ``model``, which must hold the run's initial weights: the
        log is replayed onto it, and ``step`` continues where the run stopped."""
        doc = json.loads(Path(path).read_text())
        if doc.get("format") != cls.FORMAT:
            raise InputError(f"{path} is not a {cls.FORMAT} log (format {doc.get('format')!r})")
        opt = cls(model, lr=doc["lr"], mu=doc["mu"], q=doc["q"],
                  weight_decay=doc["weight_decay"], seed=doc["seed"], include=include)
        if opt.perturbation.layout != doc["layout"]:
            raise InputError(f"{path} was recorded on parameters with layout {doc['layout']}, "
                             f"this model has {opt.perturbation.layout}; use the same model "
                             f"and `include`")
        opt.log = [StepRecord.from_dict(d) for d in doc["steps"]]
        replay(opt.perturbation, opt.log)
        return opt
