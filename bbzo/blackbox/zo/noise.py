"""Seeded noise for parameter tensors: regenerated from (seed, tensor index), never stored.

Element k of tensor ``index`` under ``seed`` lies in chunk c = k // ``CHUNK``. Each chunk has
its own ``torch.Generator``, seeded with a BLAKE2b hash of (kind, seed, index, c), and is
filled by ``torch.randn`` (or ``torch.rand`` for masks) in float32 on the tensor's device;
every parameter dtype gets these values rounded. So the noise is independent across tensors
and seeds, identical on every worker with the same kind of device (CPU's mt19937 and CUDA's
Philox give different streams), and a chunk's values do not depend on how the others are
computed: chunks are filled on ``torch.get_num_threads()`` threads, in any order.

A chunk of L elements draws ⌈L/16⌉·16 normals and keeps the first L. On CPU torch makes
normals in blocks of 16 from uniforms drawn in order, so element k does not depend on how many
elements are requested (the noise of a shorter tensor is a prefix); on CUDA it may, and there
the noise is a pure function of (seed, index, number of elements).
CPU's mt19937 keeps only the low 32 bits of a key, so two chunks share a stream with
probability 2⁻³² per pair (as with the 32-bit counter hash this replaces).

Speed (float32, one thread, this project's shared 2-core AMD EPYC): 177 M normals/s making
the noise of a 134.5M-parameter model tensor by tensor, against 19 M/s for the former counter
hash (integer mixing + Box–Muller in torch ops), ``bench/engine_seeded.py``; 200-240 M/s into
a reused buffer. torch's mt19937 + Box–Muller fill is the cost, ~4-5 ns a normal.

Two sources of that noise (``noise_source``): ``NoiseGenerator`` (the default, above) and
``NoiseTable``, the shared noise table of Salimans et al. (2017, "Evolution Strategies as a
Scalable Alternative to Reinforcement Learning"): ``size`` N(0, 1) float32 values (default
2**25, 128 MiB) made once per process and device; chunk c of tensor ``index`` under ``seed``
is the slice ``table[o : o + L]``, o = the chunk's BLAKE2b key mod (size − L + 1). Making the
noise of a step is then a hash and a view per chunk: 0.067 s for the 2,127 chunk views of a
q = 1 step on the 134.5M-parameter model (1 thread, load ~15; the table took 1.7 s to make,
once), against ~2.3 s for the generator. What it trades: the values of different chunks (other
tensors, other seeds) may overlap, so coordinates repeat one another and directions of
different seeds share entries (correlation O(1/√size) averaged over offsets, where the
generator's are independent), and each device holds 4·size bytes. Uniforms (masks) always
come from the generators.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bbzo.checks import int_at_least
from bbzo.errors import InputError

CHUNK = 1 << 18                  # elements per generator (1 MiB of float32)
SEED_BOUND = 1 << 64             # seeds are integers in [0, 2**64)
_BLOCK = 16                      # torch's CPU normal fill works in blocks of 16
TABLE_SIZE = 1 << 25             # default noise-table entries (128 MiB of float32)
_KINDS = {"normal": 0, "uniform": 1, "table": 2}
_pools: dict[int, ThreadPoolExecutor] = {}
_tables: dict[tuple[int, int, str], torch.Tensor] = {}
_table_lock = threading.Lock()


def check_seed(seed: Any) -> int:
    """``seed`` as an int in [0, 2**64), else InputError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= int(seed) < SEED_BOUND:
        raise InputError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return int(seed)


def chunk_key(kind: str, seed: int, index: int, chunk: int) -> int:
    """64-bit generator key of one chunk: BLAKE2b of (kind, seed, index, chunk)."""
    words = struct.pack("<4Q", _KINDS[kind], seed, index, chunk)
    return int.from_bytes(hashlib.blake2b(words, digest_size=8).digest(), "little")


def chunk_noise(kind: str, seed: int, index: int, chunk: int, length: int,
                device: torch.device | str, out: torch.Tensor | None = None) -> torch.Tensor:
    """(length,) values of chunk ``chunk`` of tensor ``index``: N(0, 1) for ``kind="normal"``
    (and ``"table"``, chunks of a ``NoiseTable``), U[0, 1) for ``"uniform"``; float32, or
    written into ``out`` (any floating dtype)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(chunk_key(kind, seed, index, chunk))
    draw = torch.rand if kind == "uniform" else torch.randn
    padded = -(-length // _BLOCK) * _BLOCK
    if out is not None and padded == length and out.dtype == torch.float32:
        return draw(length, generator=gen, out=out)       # no copy for float32 chunks
    values = draw(padded, generator=gen, device=device)[:length]
    return values if out is None else out.copy_(values)


def for_chunks(numel: int, fill: Callable[[int, int, int], None]) -> None:
    """Call ``fill(chunk, start, stop)`` for every chunk of a ``numel``-element tensor, on
    ``torch.get_num_threads()`` threads (torch ops release the GIL). ``fill`` must write only
    elements [start, stop), so the result does not depend on the order."""
    spans = [(c, s, min(s + CHUNK, numel)) for c, s in enumerate(range(0, numel, CHUNK))]
    threads = min(torch.get_num_threads(), len(spans))
    if threads <= 1:
        for span in spans:
            fill(*span)
        return
    if threads not in _pools:
        _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="bbzo-noise")
    list(_pools[threads].map(lambda span: fill(*span), spans))


@dataclass(frozen=True)
class NoiseGenerator:
    """The default source: every chunk from its own torch generator, i.i.d. across elements,
    chunks, tensors and seeds."""

    @property
    def config(self) -> dict:
        """What a log records of this source."""
        return {"source": "generator"}

    def chunk(self, seed: int, index: int, chunk: int, length: int,
              device: torch.device | str, out: torch.Tensor | None = None) -> torch.Tensor:
        """The (length,) N(0, 1) values of chunk ``chunk`` of tensor ``index`` under ``seed``
        (float32, or written into ``out``)."""
        return chunk_noise("normal", seed, index, chunk, length, device, out=out)

    def shift(self, x: torch.Tensor, seed: int, index: int, chunk: int, scale: float,
              mask: torch.Tensor | None, out: torch.Tensor) -> None:
        """out = x + scale·(z ⊙ mask) for the chunk's z; x, mask, out: (length,)."""
        z = chunk_noise("normal", seed, index, chunk, x.numel(), x.device, out=out)
        if mask is not None:
            z.mul_(mask)
        z.mul_(scale).add_(x)

    def combine(self, seeds: Sequence[int], weights: Sequence[float], index: int, chunk: int,
                mask: torch.Tensor | None, out: torch.Tensor) -> None:
        """out = Σᵢ weightsᵢ·z(seedsᵢ) ⊙ mask for the chunk; mask, out: (length,)."""
        n, device = out.numel(), out.device
        chunk_noise("normal", seeds[0], index, chunk, n, device, out=out).mul_(weights[0])
        for seed, w in zip(seeds[1:], weights[1:], strict=True):
            out.add_(chunk_noise("normal", seed, index, chunk, n, device).to(out.dtype), alpha=w)
        if mask is not None:
            out.mul_(mask)


@dataclass(frozen=True)
class NoiseTable:
    """A shared table of ``size`` i.i.d. N(0, 1) float32 values (Salimans et al. 2017): chunk
    c of tensor ``index`` under ``seed`` is the slice ``table[o : o + L]``, o = the chunk's
    BLAKE2b key mod (size − L + 1), so making noise costs a hash and a view.

    The table is made once per (size, seed, device) and cached: by ``torch.randn`` on the CPU
    in chunks keyed by (``seed``, chunk), then moved, so it is the same on every device.
    Trade-offs against ``NoiseGenerator``: within a chunk the entries are distinct table
    entries, but slices of different chunks (tensors, seeds) may overlap, so coordinates of
    a direction can repeat one another's values; averaged over offsets the correlation is
    O(1/√size). Memory: 4·size bytes per device (128 MiB at the default 2**25).

    Args:
        size: table entries, at least ``CHUNK`` (one chunk must fit).
        seed: the table's seed, an integer in [0, 2**64).
    """

    size: int = TABLE_SIZE
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", int_at_least("NoiseTable size", self.size, CHUNK))
        object.__setattr__(self, "seed", check_seed(self.seed))

    @property
    def config(self) -> dict:
        """What a log records of this source: enough to rebuild the same table."""
        return {"source": "table", "size": self.size, "seed": self.seed}

    def values(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The (size,) float32 table on ``device``, made on first use and cached (on one
        thread, under a lock: noise threads may ask for it at once)."""
        device = torch.device(device)
        key = (self.size, self.seed, str(device))
        table = _tables.get(key)
        if table is None:
            with _table_lock:
                if key not in _tables:
                    cpu = _tables.get((self.size, self.seed, "cpu"))
                    if cpu is None:
                        cpu = torch.empty(self.size)
                        for c, start in enumerate(range(0, self.size, CHUNK)):
                            stop = min(start + CHUNK, self.size)
                            chunk_noise("table", self.seed, 0, c, stop - start, "cpu",
                                        out=cpu[start:stop])
                        _tables[(self.size, self.seed, "cpu")] = cpu
                    _tables[key] = cpu.to(device)
                table = _tables[key]
        return table

    def offset(self, seed: int, index: int, chunk: int, length: int) -> int:
        """Where the chunk's slice of ``length`` ≤ ``CHUNK`` entries starts in the table."""
        return chunk_key("normal", seed, index, chunk) % (self.size - length + 1)

    def chunk(self, seed: int, index: int, chunk: int, length: int,
              device: torch.device | str, out: torch.Tensor | None = None) -> torch.Tensor:
        """The chunk's (length,) float32 slice of the table: a view (read it, never write
        it), or copied into ``out``."""
        o = self.offset(seed, index, chunk, length)
        view = self.values(device)[o:o + length]
        return view if out is None else out.copy_(view)

    def shift(self, x: torch.Tensor, seed: int, index: int, chunk: int, scale: float,
              mask: torch.Tensor | None, out: torch.Tensor) -> None:
        """out = x + scale·(z ⊙ mask), reading z as a view of the table (one pass)."""
        z = self.chunk(seed, index, chunk, x.numel(), x.device)
        torch.add(x, z if mask is None else z * mask, alpha=scale, out=out)

    def combine(self, seeds: Sequence[int], weights: Sequence[float], index: int, chunk: int,
                mask: torch.Tensor | None, out: torch.Tensor) -> None:
        """out = Σᵢ weightsᵢ·z(seedsᵢ) ⊙ mask, adding the q views in one pass, in out's
        dtype."""
        n, device = out.numel(), out.device
        first = self.chunk(seeds[0], index, chunk, n, device)
        torch.mul(first.to(torch.promote_types(first.dtype, out.dtype)), weights[0], out=out)
        for seed, w in zip(seeds[1:], weights[1:], strict=True):
            out.add_(self.chunk(seed, index, chunk, n, device), alpha=w)
        if mask is not None:
            out.mul_(mask)

    def add_into(self, x: torch.Tensor, seeds: Sequence[int], weights: Sequence[float],
                 index: int, chunk: int, mask: torch.Tensor | None, alpha: float) -> None:
        """x += alpha·Σᵢ weightsᵢ·z(seedsᵢ) ⊙ mask in place: each seed's view added straight
        into x, no buffer."""
        for seed, w in zip(seeds, weights, strict=True):
            z = self.chunk(seed, index, chunk, x.numel(), x.device)
            x.add_(z if mask is None else z * mask, alpha=alpha * w)


NoiseSource = NoiseGenerator | NoiseTable


def noise_source(noise: Any) -> NoiseSource:
    """``noise`` as a source: ``"generator"``, ``"table"`` (a default ``NoiseTable``), a
    ``NoiseGenerator``/``NoiseTable``, or the ``config`` dict of one (from a log)."""
    if isinstance(noise, (NoiseGenerator, NoiseTable)):
        return noise
    if isinstance(noise, str) and noise in ("generator", "table"):
        return NoiseGenerator() if noise == "generator" else NoiseTable()
    if isinstance(noise, dict) and noise == {"source": "generator"}:
        return NoiseGenerator()
    if isinstance(noise, dict) and noise.get("source") == "table" \
            and set(noise) == {"source", "size", "seed"}:
        return NoiseTable(noise["size"], noise["seed"])
    raise InputError(f"noise must be 'generator', 'table' or NoiseTable(size=..., seed=...), "
                     f"got {noise!r}")


def seeded_normal(seed: int, index: int, numel: int, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu", noise: Any = "generator") -> torch.Tensor:
    """The (numel,) N(0, 1) noise of tensor ``index`` under ``seed`` from source ``noise``
    (see ``noise_source``), a new tensor."""
    seed = check_seed(seed)
    index = int_at_least("index", index, 0)
    numel = int_at_least("numel", numel, 0)
    source = noise_source(noise)
    out = torch.empty(numel, dtype=dtype, device=device)

    def fill(chunk: int, start: int, stop: int) -> None:
        source.chunk(seed, index, chunk, stop - start, device, out=out[start:stop])

    for_chunks(numel, fill)
    return out
