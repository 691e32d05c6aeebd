"""A torch module's forward tuned for CPU inference: a frozen, oneDNN-optimised trace run on
fixed-size chunks, side by side on worker threads.

``TunedForward(module)`` traces ``module`` once per input shape (``tuned_forward``: frozen,
``optimize_for_inference``, checked against the module within ``TUNED_TOL``) and runs it on
chunks of ``chunk`` rows (the last one zero-padded, since a trace may fix the batch size),
gathered straight from a list of arrays (``parts``), so their stack is never built. A chunk of
a small CNN is too small to split well across torch's intra-op threads, so with ``threads`` > 1
whole chunks go to long-lived worker threads (``ChunkWorkers``), each running torch with one
thread: on 2 cores this certifies a 4.45 MFLOP CNN 15-40 % faster (``bench/certify.py``).
Where the module does not trace, or its trace disagrees with it, the module itself runs.
"""

from __future__ import annotations

import concurrent.futures
import threading
import warnings
from collections.abc import Callable

import numpy as np
import torch

from bbzo.errors import InputError

TUNED_CHUNK = 128
TUNED_TOL = 1e-4  # largest difference allowed between the tuned graph and the module
Graph = Callable[[torch.Tensor], torch.Tensor]


def tuned_forward(module: torch.nn.Module, example: torch.Tensor) -> Graph | None:
    """``module`` traced on ``example`` (batch, *input_shape), frozen and optimised for CPU
    inference (oneDNN convolutions, folded constants), for inputs shaped like ``example``
    only (a trace may fix the batch size). None when tracing warns (Python control flow or
    sizes read from the data), fails, or the graph's output differs from the module's on
    ``example`` (beyond ``TUNED_TOL``)."""
    example = example.contiguous()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", torch.jit.TracerWarning)
        try:
            expected = module(example)
            graph = torch.jit.optimize_for_inference(torch.jit.trace(module, example))
            graph(example)  # warm-up: the first runs of a TorchScript graph specialise it
            got = graph(example)
        except Exception:  # noqa: BLE001 - any failure means: run the module as it is
            return None
    if not isinstance(got, torch.Tensor) or not isinstance(expected, torch.Tensor) \
            or got.shape != expected.shape \
            or not torch.allclose(got.float(), expected.float(), rtol=TUNED_TOL, atol=TUNED_TOL):
        return None
    return graph


class ChunkWorkers:
    """``threads`` long-lived worker threads, each running torch with one intra-op thread."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        keep = torch.get_num_threads()
        started = threading.Barrier(threads + 1, timeout=60)

        def one_thread() -> None:
            torch.get_num_threads()  # torch's lazy per-thread set-up first: it would reset
            torch.set_num_threads(1)  # this thread's own count (OpenMP keeps it per thread)
            started.wait()

        self._pool = concurrent.futures.ThreadPoolExecutor(
            threads, thread_name_prefix="bbzo-chunks", initializer=one_thread)
        for _ in range(threads):  # a task per thread, so that all of them start now
            self._pool.submit(int)
        started.wait()
        # torch.set_num_threads also sets the count that threads started later begin with:
        # put back the caller's, so that only the workers run with one.
        torch.set_num_threads(keep)

    def map(self, fn: Callable[[int], torch.Tensor], items: range) -> list[torch.Tensor]:
        """``[fn(item) for item in items]``, each call taken by the next free worker."""
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _gather(parts: list[np.ndarray], ends: np.ndarray, start: int, stop: int,
            out: np.ndarray) -> None:
    """Rows ``start..stop`` of the stacked ``parts`` (``ends``: their cumulative lengths) into
    ``out``'s first rows, and zeros into the rest of ``out``."""
    filled = 0
    for k in range(int(np.searchsorted(ends, start, side="right")), len(parts)):
        lo = start + filled - (int(ends[k - 1]) if k else 0)
        take = min(len(parts[k]) - lo, stop - start - filled)
        out[filled:filled + take] = parts[k][lo:lo + take]
        filled += take
        if filled == stop - start:
            break
    out[filled:] = 0


class TunedForward:
    """``module``'s forward for CPU inference (module doc).

    Args:
        module: the network, in eval mode, run without gradients.
        chunk: rows per forward pass (activations of a small CNN stay in cache).
        threads: worker threads running chunks side by side, each with one torch thread;
            None: ``torch.get_num_threads()`` of the calling thread at each call; 1: the
            calling thread runs every chunk with torch's own intra-op threads.
    """

    def __init__(self, module: torch.nn.Module, *, chunk: int = TUNED_CHUNK,
                 threads: int | None = None) -> None:
        for name, value in (("chunk", chunk), ("threads", 1 if threads is None else threads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        self.module = module
        self.chunk = chunk
        self.threads = threads
        self.graphs: dict[tuple[int, ...], Graph | None] = {}  # per input shape; None: module
        self._workers: ChunkWorkers | None = None
        self._lock = threading.Lock()  # calls may come from several threads at once

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The output for ``x`` (n, *input_shape), a CPU tensor."""
        return self.parts([x.detach().contiguous().numpy()])

    def parts(self, parts: list[np.ndarray]) -> torch.Tensor:
        """The output for the rows of ``parts`` stacked (one input shape, one dtype)."""
        shape = tuple(parts[0].shape[1:])
        dtype = torch.from_numpy(np.empty(0, parts[0].dtype)).dtype
        ends = np.cumsum([len(part) for part in parts])
        total = int(ends[-1])
        with self._lock:
            if shape not in self.graphs:
                example = torch.empty(self.chunk, *shape, dtype=dtype)
                _gather(parts, ends, 0, min(self.chunk, total), example.numpy())
                self.graphs[shape] = tuned_forward(self.module, example)
        graph = self.graphs[shape]
        if graph is None:
            with torch.no_grad():
                return self.module(torch.from_numpy(np.concatenate(parts)))
        scratch = threading.local()  # each thread's chunk buffer

        def run(start: int) -> torch.Tensor:
            """The graph's output for the chunk of rows from ``start``."""
            buffer = getattr(scratch, "buffer", None)
            if buffer is None:
                buffer = scratch.buffer = torch.empty(self.chunk, *shape, dtype=dtype)
            stop = min(start + self.chunk, total)
            _gather(parts, ends, start, stop, buffer.numpy())
            with torch.no_grad():  # grad mode is per thread
                out = graph(buffer)[:stop - start]
            return out.clone() if out.data_ptr() == buffer.data_ptr() else out  # buffer is reused

        starts = range(0, total, self.chunk)
        threads = min(len(starts), self.threads or torch.get_num_threads())
        if threads < 2:
            return torch.cat([run(start) for start in starts])
        with self._lock:
            if self._workers is None or self._workers.threads < threads:
                self._close()
                self._workers = ChunkWorkers(threads)
            workers = self._workers
        return torch.cat(workers.map(run, starts))

    def close(self) -> None:
        """Stop the worker threads, if any (they start again when needed)."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._workers is not None:
            self._workers.close()
            self._workers = None
