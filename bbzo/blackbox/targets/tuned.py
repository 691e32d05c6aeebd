"""A torch module's forward tuned for CPU inference: a compiled graph run on fixed-size chunks,
side by side on worker threads.

``TunedForward(module)`` compiles ``module`` once per input shape and runs the graph on chunks
of ``chunk`` rows (the last one zero-padded, since a graph may fix the batch size), gathered
straight from a list of arrays (``parts``), so their stack is never built. The graph is, in the
order tried (``backend="auto"``):

- ``onnxruntime``: the module exported to ONNX and run by an ONNX Runtime session with one
  thread (``onnx_forward``; ``onnxruntime`` and ``onnx``, bbzo dependencies, skipped where
  they do not import): on this project's 2-core machine 1.4-1.5× the samples/s of the
  trace below for a 4.45 MFLOP CNN (fused convolutions and activations);
- ``torchscript``: a frozen trace optimised for inference (oneDNN convolutions, folded
  constants; ``tuned_forward``);
- the module itself, where neither builds or agrees with the module on the first chunk
  (within ``TUNED_TOL``).

A chunk of a small CNN is too small to split well across intra-op threads, so with ``threads``
> 1 whole chunks go to long-lived worker threads (``ChunkWorkers``), each running torch with one
thread: on 2 cores this certifies a 4.45 MFLOP CNN 15-40 % faster (``bench/certify.py``).
"""

from __future__ import annotations

import concurrent.futures
import io
import threading
import warnings
from collections.abc import Callable

import numpy as np
import torch

from bbzo.errors import InputError

TUNED_CHUNK = 128
TUNED_TOL = 1e-4  # largest difference allowed between the tuned graph and the module
BACKENDS = ("auto", "onnxruntime", "torchscript")
Graph = Callable[[torch.Tensor], torch.Tensor]


def _agrees(got: object, expected: object) -> bool:
    """Whether a graph's output ``got`` matches the module's ``expected`` (``TUNED_TOL``)."""
    return isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor) \
        and got.shape == expected.shape \
        and torch.allclose(got.float(), expected.float(), rtol=TUNED_TOL, atol=TUNED_TOL)


def _checked(module: torch.nn.Module, example: torch.Tensor,
             compile_graph: Callable[[torch.nn.Module, torch.Tensor], Graph]) -> Graph | None:
    """``compile_graph(module, example)``, or None when it warns while tracing (Python control
    flow or sizes read from the data: ``TracerWarning``), fails, or its output differs from
    the module's on ``example`` (beyond ``TUNED_TOL``)."""
    example = example.contiguous()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. the ONNX export's deprecation notices
        warnings.simplefilter("error", torch.jit.TracerWarning)
        try:
            expected = module(example)
            graph = compile_graph(module, example)
            got = graph(example)
        except Exception:  # noqa: BLE001 - any failure means: try the next backend
            return None
    return graph if _agrees(got, expected) else None


def _trace(module: torch.nn.Module, example: torch.Tensor) -> Graph:
    graph = torch.jit.optimize_for_inference(torch.jit.trace(module, example))
    graph(example)  # warm-up: the first runs of a TorchScript graph specialise it
    return graph


def tuned_forward(module: torch.nn.Module, example: torch.Tensor) -> Graph | None:
    """``module`` traced on ``example`` (batch, *input_shape), frozen and optimised for CPU
    inference (oneDNN convolutions, folded constants), for inputs shaped like ``example``
    only (a trace may fix the batch size); None where ``_checked`` says so."""
    return _checked(module, example, _trace)


class OnnxGraph:
    """An ONNX Runtime session as a ``Graph``: a float32 CPU tensor in, a tensor out."""

    def __init__(self, session: object, name: str) -> None:
        self.session, self.name = session, name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.name: x.numpy()})[0])


def onnx_forward(module: torch.nn.Module, example: torch.Tensor) -> Graph | None:
    """``module`` exported to ONNX on ``example`` (batch, *input_shape; float32) and run by an
    ONNX Runtime session with one thread and every graph optimisation, for inputs shaped like
    ``example`` only. The export traces the module, so None where ``_checked`` says so, as for
    ``tuned_forward``; also when ``onnxruntime`` or ``onnx`` is not installed or the input is
    not float32."""
    if example.dtype != torch.float32:
        return None
    try:
        import onnxruntime
    except ImportError:
        return None

    def session(module: torch.nn.Module, example: torch.Tensor) -> Graph:
        exported = io.BytesIO()
        torch.onnx.export(module, (example,), exported, dynamo=False,
                          input_names=["inputs"], output_names=["outputs"])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        return OnnxGraph(onnxruntime.InferenceSession(exported.getvalue(), options,
                                                      providers=["CPUExecutionProvider"]),
                         "inputs")

    return _checked(module, example, session)


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
        backend: ``auto`` (ONNX Runtime, else TorchScript), ``onnxruntime`` (else the module)
            or ``torchscript`` (module doc).

    Attributes:
        backends: per input shape, what runs it: ``onnxruntime``, ``torchscript`` or
            ``module``.
    """

    def __init__(self, module: torch.nn.Module, *, chunk: int = TUNED_CHUNK,
                 threads: int | None = None, backend: str = "auto") -> None:
        for name, value in (("chunk", chunk), ("threads", 1 if threads is None else threads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if backend not in BACKENDS:
            raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.module = module
        self.chunk = chunk
        self.threads = threads
        self.backend = backend
        self.graphs: dict[tuple[int, ...], Graph | None] = {}  # per input shape; None: module
        self.backends: dict[tuple[int, ...], str] = {}
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
                self.graphs[shape], self.backends[shape] = self._compile(example)
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

    @property
    def ran(self) -> str:
        """What has run so far: the ``backends`` used, joined by "/" ("" before any call)."""
        return "/".join(sorted(set(self.backends.values())))

    def _compile(self, example: torch.Tensor) -> tuple[Graph | None, str]:
        """The first graph of the ``backend``'s order that builds and agrees with the module
        on ``example``, and its backend's name; (None, "module") when none does."""
        builders = {"auto": [("onnxruntime", onnx_forward), ("torchscript", tuned_forward)],
                    "onnxruntime": [("onnxruntime", onnx_forward)],
                    "torchscript": [("torchscript", tuned_forward)]}[self.backend]
        for name, build in builders:
            graph = build(self.module, example)
            if graph is not None:
                return graph, name
        return None, "module"

    def close(self) -> None:
        """Stop the worker threads, if any (they start again when needed)."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._workers is not None:
            self._workers.close()
            self._workers = None
