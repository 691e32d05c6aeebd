"""Classifier targets: inputs in, class probabilities out (the ``classify`` request kind).

A request carries ``payload["inputs"]`` shaped (n, *input_shape): a nested list of floats (the
answer is ``{"probs": [[float] * classes] * n}``) or, for a dense request, a numpy array or torch
tensor (the answer is ``{"probs": float64 array (n, classes)}``). Inputs of all requests of one
call that share an input shape go to the model together (``predict_parts``): as one stacked
float32 array, or, for a tuned ``TorchClassifier``, in chunks gathered straight from the
requests' arrays; without a list round trip for dense requests (the HTTP endpoint still
receives JSON lists: its wire format). Every
answer is checked: finite, >= 0, rows summing to 1 within ``SUM_TOL`` (a bad reply is a
``TargetError``, never a silent score).

Three sources:
- a torch module (``TorchClassifier``), from ``torch:<file.py>:<factory>`` (the file is imported
  by path and ``factory()`` must return an ``nn.Module``) or from a folder written by
  ``save_classifier`` (``model.pt`` + ``config.json``; a folder holding only a TorchScript
  ``model.pt`` also loads). Outputs rule (``outputs``): ``"probs"`` takes the module's output as
  probabilities, ``"logits"`` applies a softmax, ``"auto"`` (default) takes it as probabilities
  only when every row is already a distribution (all values in [0, 1], rows summing to 1 within
  ``SUM_TOL``) and applies a softmax otherwise.
- an HTTP(S) JSON endpoint (``HTTPClassifier``): POST ``{"inputs": [...]}``, expect
  ``{"probs": [[...]]}``. An endpoint that answers with the header ``X-Bbzo-Arrays: base64``
  (``bbzo serve-classifier``) is sent arrays as ``{"dtype", "shape", "base64"}`` objects
  (``encode_array``; raw little-endian bytes, so values are exact and no float is printed as
  text) and answers in kind from then on. HTTP errors map to ``TransientError`` (408/429/5xx,
  timeouts, refused connections: retried by the query layer) or ``PermanentError``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.util
import json
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bbzo.blackbox.protocol import Request, Response, error_for_status, parse_retry_after
from bbzo.blackbox.targets.base import Target
from bbzo.blackbox.targets.tuned import TUNED_CHUNK, TunedForward
from bbzo.errors import InputError, TargetError, TransientError

SUM_TOL = 1e-3
OUTPUTS = ("auto", "probs", "logits")
CONFIG = "config.json"
WEIGHTS = "model.pt"
ARCHITECTURE = "architecture.py"
ARRAYS_HEADER = "X-Bbzo-Arrays"  # "base64": the endpoint reads and writes encode_array objects
WIRE_DTYPES = ("<f4", "<f8")


def check_probs(probs: np.ndarray, rows: int, who: str) -> np.ndarray:
    """``probs`` as float64 (rows, classes) if it is a valid probability table, else TargetError."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != rows or probs.shape[1] < 1:
        raise TargetError(f"{who} returned probabilities of shape {probs.shape}; expected "
                          f"({rows}, classes)")
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise TargetError(f"{who} returned probabilities that are negative, NaN or infinite")
    worst = float(np.max(np.abs(probs.sum(axis=1) - 1.0)))
    if worst > SUM_TOL:
        raise TargetError(f"{who} returned rows summing to 1 ± {worst:.3g}, more than {SUM_TOL}")
    return probs


def encode_array(array: np.ndarray) -> dict:
    """A float array as JSON data: ``{"dtype": "<f4"|"<f8", "shape": [...], "base64": ...}``."""
    array = np.ascontiguousarray(array, dtype="<f8" if array.dtype == np.float64 else "<f4")
    return {"dtype": array.dtype.str, "shape": list(array.shape),
            "base64": base64.b64encode(array.data).decode("ascii")}


def decode_array(obj: dict) -> np.ndarray:
    """Inverse of ``encode_array``; ``ValueError`` when the object is malformed."""
    if not isinstance(obj, dict) or obj.get("dtype") not in WIRE_DTYPES \
            or not isinstance(obj.get("shape"), list) or not isinstance(obj.get("base64"), str):
        raise ValueError('an array must be {"dtype": "<f4" or "<f8", "shape": [...], '
                         '"base64": "..."}')
    data = base64.b64decode(obj["base64"], validate=True)
    return np.frombuffer(data, obj["dtype"]).reshape(obj["shape"])


def _inputs(request: Request) -> np.ndarray:
    """The request's inputs as a float32 array (n, ...), n >= 1 (no copy for a float32 array)."""
    try:
        x = np.asarray(request.payload.get("inputs"), dtype=np.float32)
    except (TypeError, ValueError):
        x = np.empty(0)
    if x.ndim < 2 or x.shape[0] == 0 or not np.all(np.isfinite(x)):
        raise InputError("classify requests need payload['inputs']: a non-empty array or "
                         "rectangular nested list of finite numbers shaped (n, *input_shape)")
    return x


class _Classifier(Target):
    """Shared batching: inputs of all requests with one input shape go through one ``predict``."""

    capabilities = frozenset({"classify"})

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (n, classes) for inputs ``x`` (n, *input_shape); validated by ``call``."""
        raise NotImplementedError

    def predict_parts(self, parts: list[np.ndarray]) -> np.ndarray:
        """``predict`` of ``parts`` (each (n_i, *input_shape), one shape, read-only) stacked
        in order; a target that can read the parts where they are overrides it."""
        return self.predict(np.concatenate(parts))  # a fresh, writable stack

    def call(self, requests: list[Request]) -> list[Response]:
        """One response per request; requests are grouped by input shape."""
        arrays = []
        for r in requests:
            self.check(r)
            arrays.append(_inputs(r))
        groups: dict[tuple, list[int]] = {}
        for i, x in enumerate(arrays):
            groups.setdefault(x.shape[1:], []).append(i)
        responses: list[Response | None] = [None] * len(requests)
        for where in groups.values():
            parts = [arrays[i] for i in where]
            start = time.perf_counter()
            probs = check_probs(self.predict_parts(parts), sum(len(p) for p in parts), self.id)
            elapsed = time.perf_counter() - start
            lo = 0
            for i in where:
                hi = lo + len(arrays[i])
                rows = probs[lo:hi].copy() if requests[i].dense else probs[lo:hi].tolist()
                responses[i] = Response({"probs": rows}, latency_s=elapsed)
                lo = hi
        return responses  # type: ignore[return-value]


class TorchClassifier(_Classifier):
    """A local ``nn.Module`` mapping a float tensor (n, *input_shape) to (n, classes).

    Args:
        module: the network (put in eval mode).
        id: the target id.
        outputs: ``auto``, ``probs`` or ``logits`` (module doc).
        device: torch device; default CUDA when present, else CPU.
        max_batch: requests per call.
        tune: run the forward as a compiled graph (CPU only; ``TunedForward``: ONNX Runtime
            or a frozen TorchScript trace, chunks of ``chunk`` inputs on ``threads`` worker
            threads); falls back to the plain module when the module does not trace or its
            graph disagrees with it. Off by default: a traced module skips the module's Python
            code (hooks, side effects).
        chunk, threads, backend: ``TunedForward``'s (``backend``: what compiles the tuned
            graph, ONNX Runtime when installed by default).
    """

    def __init__(self, module: torch.nn.Module, id: str, *, outputs: str = "auto",
                 device: str | None = None, max_batch: int = 64, tune: bool = False,
                 chunk: int = TUNED_CHUNK, threads: int | None = None,
                 backend: str = "auto") -> None:
        if not isinstance(module, torch.nn.Module):
            raise InputError(f"{id}: expected a torch nn.Module, got {type(module).__name__}")
        if outputs not in OUTPUTS:
            raise InputError(f"outputs must be one of {', '.join(OUTPUTS)}, got {outputs!r}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = module.to(self.device).eval()
        self.id = id
        self.outputs = outputs
        self.max_batch = max_batch
        self.tune = tune
        self.runner = TunedForward(self.module, chunk=chunk, threads=threads, backend=backend)

    @property
    def _tuned(self) -> bool:
        return self.tune and self.device.type == "cpu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The module's raw output for ``x`` (n, *input_shape); tuned when ``tune`` is set and
        the device is the CPU (``TunedForward``)."""
        return self.runner(x) if self._tuned else self.module(x)

    def close(self) -> None:
        """Stop the tuned forward's worker threads, if any (they start again when needed)."""
        self.runner.close()

    @torch.inference_mode()
    def predict(self, x: np.ndarray) -> np.ndarray:
        if self._tuned:
            return self._probabilities(self.runner.parts([x]))
        return self._probabilities(self.forward(torch.from_numpy(x).to(self.device)))

    @torch.inference_mode()
    def predict_parts(self, parts: list[np.ndarray]) -> np.ndarray:
        """``predict`` of the stacked parts; tuned: without stacking them
        (``TunedForward.parts``)."""
        if self._tuned:
            return self._probabilities(self.runner.parts(parts))
        return self.predict(np.concatenate(parts))

    def _probabilities(self, out: torch.Tensor) -> np.ndarray:
        """The module's raw output (n, classes) as probabilities (``outputs``)."""
        out = out.float()
        if out.ndim != 2:
            raise TargetError(f"{self.id} returned shape {tuple(out.shape)}; expected "
                              f"(n, classes)")
        is_dist = bool(((out >= 0) & (out <= 1)).all()) and bool(
            ((out.sum(-1) - 1).abs() <= SUM_TOL).all())
        if self.outputs == "logits" or (self.outputs == "auto" and not is_dist):
            out = out.softmax(-1)
        return out.cpu().numpy()


def load_factory(ref: str, base: Path | None = None) -> Callable[..., object]:
    """The callable named by ``ref``: ``file.py:name`` (imported by path, relative to ``base``
    or the working folder) or ``package.module:name``."""
    where, _, name = ref.rpartition(":")
    if not where or not name:
        raise InputError(f"factory {ref!r} must look like file.py:name or package.module:name")
    if where.endswith(".py"):
        path = (base / where if base is not None else Path(where)).expanduser().resolve()
        if not path.is_file():
            raise InputError(f"factory file {path} does not exist")
        key = "bbzo_factory_" + hashlib.sha256(str(path).encode()).hexdigest()[:16]
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[key] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise InputError(f"cannot import {where!r} for factory {ref!r}: {err}") from err
    factory = getattr(module, name, None)
    if not callable(factory):
        raise InputError(f"{where} has no callable named {name!r}")
    return factory


def load_torch_factory(ref: str, *, outputs: str = "auto", device: str | None = None,
                       max_batch: int = 64) -> TorchClassifier:
    """``TorchClassifier`` of the module returned by ``factory()`` for ``ref`` = file.py:name."""
    module = load_factory(ref)()
    return TorchClassifier(module, f"torch:{ref}", outputs=outputs,  # type: ignore[arg-type]
                           device=device, max_batch=max_batch)


def save_classifier(model: torch.nn.Module, folder: str | Path,
                    factory: str | Callable[..., torch.nn.Module],
                    kwargs: dict | None = None, outputs: str = "auto") -> Path:
    """Save ``model`` so that ``load_classifier(folder)`` (or the spec ``<folder>``) rebuilds it.

    Writes ``model.pt`` (the state_dict) and ``config.json`` naming the architecture factory:
    ``factory(**kwargs)`` must build the same architecture. ``factory`` is a callable defined in
    an importable module, ``package.module:name``, or ``file.py:name`` (the file is copied into
    the folder as ``architecture.py`` so the folder is self-contained).
    """
    if outputs not in OUTPUTS:
        raise InputError(f"outputs must be one of {', '.join(OUTPUTS)}, got {outputs!r}")
    if callable(factory):
        if factory.__module__ == "__main__" or "<locals>" in factory.__qualname__:
            raise InputError("the factory must be importable: define it in a module, not in "
                             "__main__ or inside a function")
        factory = f"{factory.__module__}:{factory.__qualname__}"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    where, _, name = factory.rpartition(":")
    if where.endswith(".py"):
        shutil.copyfile(where, folder / ARCHITECTURE)
        factory = f"{ARCHITECTURE}:{name}"
    torch.save(model.state_dict(), folder / WEIGHTS)
    config = {"format": "state_dict", "factory": factory, "kwargs": kwargs or {},
              "outputs": outputs}
    (folder / CONFIG).write_text(json.dumps(config, indent=2))
    return folder


def is_saved_classifier(folder: Path) -> bool:
    """True when ``folder`` holds a classifier written by ``save_classifier`` or TorchScript."""
    return (folder / WEIGHTS).is_file()


def load_classifier(folder: str | Path, *, outputs: str | None = None,
                    device: str | None = None, max_batch: int = 64) -> TorchClassifier:
    """The ``TorchClassifier`` saved in ``folder`` (``save_classifier`` or TorchScript model.pt).

    ``outputs`` defaults to the saved rule (``auto`` for TorchScript).
    """
    folder = Path(folder).expanduser().resolve()
    if not is_saved_classifier(folder):
        raise InputError(f"{folder} holds no {WEIGHTS}; save one with save_classifier")
    config_file = folder / CONFIG
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        if config.get("format") != "state_dict" or "factory" not in config:
            raise InputError(f"{config_file} was not written by save_classifier (no factory)")
        module = load_factory(config["factory"], base=folder)(**config.get("kwargs", {}))
        state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
        module.load_state_dict(state)  # type: ignore[union-attr]
    else:
        config = {}
        module = torch.jit.load(str(folder / WEIGHTS), map_location="cpu")
    return TorchClassifier(module, f"torch:{folder}",  # type: ignore[arg-type]
                           outputs=outputs or config.get("outputs", "auto"), device=device,
                           max_batch=max_batch)


class HTTPClassifier(_Classifier):
    """A JSON classifier endpoint: POST ``{"inputs": [...]}`` → ``{"probs": [[...]]}``.

    Args:
        url: ``http://`` or ``https://`` address.
        timeout: seconds per request.
        max_batch: requests per call (their inputs go in one POST per input shape).
        headers: extra HTTP headers (e.g. authorization); never part of ``id``.

    Attributes:
        wire: ``"json"`` (nested lists) until the endpoint advertises ``ARRAYS_HEADER``, then
            ``"base64"`` (module doc).
    """

    def __init__(self, url: str, *, timeout: float = 30.0, max_batch: int = 32,
                 headers: dict[str, str] | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"{url!r} is not an http(s) address")
        self.url = url
        # The id keeps what decides the answers and drops credentials and query strings.
        self.id = urllib.parse.urlunsplit(
            (parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else ""),
             parts.path, "", ""))
        self.timeout = timeout
        self.max_batch = max_batch
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.wire = "json"

    def predict(self, x: np.ndarray) -> np.ndarray:
        inputs = encode_array(x) if self.wire == "base64" else x.tolist()
        body = json.dumps({"inputs": inputs}).encode()
        request = urllib.request.Request(self.url, data=body, headers=self.headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                text = reply.read()
                if reply.headers.get(ARRAYS_HEADER) == "base64":
                    self.wire = "base64"
        except urllib.error.HTTPError as err:
            detail = err.read()[:200].decode(errors="replace")
            raise error_for_status(err.code, f"{self.id} answered HTTP {err.code}: {detail}",
                                   parse_retry_after(err.headers.get("Retry-After"))) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            reason = getattr(err, "reason", err)
            raise TransientError(f"{self.id} unreachable: {reason}") from None
        try:
            probs = json.loads(text)["probs"]
        except (ValueError, KeyError, TypeError):
            raise TargetError(f"{self.id} did not reply with JSON {{\"probs\": [[...]]}}: "
                              f"{text[:200]!r}") from None
        try:
            if isinstance(probs, dict):
                probs = decode_array(probs)
            return np.asarray(probs, dtype=np.float64)
        except (TypeError, ValueError):
            raise TargetError(f"{self.id} replied with probs that are not a numeric table") \
                from None
