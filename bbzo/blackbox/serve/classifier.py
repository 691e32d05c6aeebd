"""``bbzo serve-classifier``: a classifier target behind the JSON endpoint ``HTTPClassifier``
speaks, so the HTTP black-box path is exercised for real.

POST ``/classify`` with ``{"inputs": [...]}`` (n, *input_shape) → ``{"probs": [[...]]}``, or
with ``{"inputs": encode_array(x)}`` → ``{"probs": encode_array(probs)}`` (every answer carries
``X-Bbzo-Arrays: base64`` so ``HTTPClassifier`` switches to arrays after its first call);
GET ``/stats`` → ``{"inputs": N, "calls": K, "model_seconds": S}`` (what the model did, for
comparing a client's throughput with the server's own classification rate). Errors are JSON
``{"error": {"message": ...}}`` with status 400 (bad body), 413 (too large) or 500.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse
from starlette.routing import Route

from bbzo.blackbox.protocol import Request
from bbzo.blackbox.serve.app import DEFAULT_HOST, listening_socket
from bbzo.blackbox.targets.base import Target
from bbzo.blackbox.targets.classifier import (
    ARRAYS_HEADER,
    TorchClassifier,
    decode_array,
    encode_array,
)
from bbzo.errors import BbzoError, InputError

MAX_CLASSIFY_BYTES = 64 << 20  # 1,000 MNIST images as JSON text are about 10 MB


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status_code=status,
                        headers={ARRAYS_HEADER: "base64"})


class _ClassifierApp:
    def __init__(self, target: Target, max_body_bytes: int) -> None:
        self.target = target
        self.max_body_bytes = max_body_bytes
        self.lock = threading.Lock()  # one forward pass at a time
        self.inputs = self.calls = 0
        self.model_seconds = 0.0
        self.asgi = Starlette(routes=[Route("/classify", self.classify, methods=["POST"]),
                                      Route("/stats", self.stats, methods=["GET"])])

    def _answer(self, inputs: np.ndarray) -> np.ndarray:
        with self.lock:
            start = time.perf_counter()
            [response] = self.target.call([Request("classify", {"inputs": inputs})])
            self.model_seconds += time.perf_counter() - start
            self.inputs += len(inputs)
            self.calls += 1
        return np.asarray(response.output["probs"], dtype=np.float64)

    async def classify(self, request: HttpRequest) -> JSONResponse:
        raw = await request.body()
        if len(raw) > self.max_body_bytes:
            return _error(413, f"body of {len(raw)} bytes is over {self.max_body_bytes}")
        try:
            sent = json.loads(raw)["inputs"]
            arrays = isinstance(sent, dict)
            inputs = np.asarray(decode_array(sent) if arrays else sent, dtype=np.float32)
        except (ValueError, KeyError, TypeError):
            return _error(400, 'send JSON {"inputs": [...]} shaped (n, *input_shape), or '
                               '{"inputs": {"dtype": "<f4", "shape": [...], "base64": ...}}')
        try:
            probs = await asyncio.to_thread(self._answer, inputs)
        except BbzoError as err:
            return _error(400, " ".join(str(err).split()))
        except Exception as err:  # noqa: BLE001 - the model failed on these inputs
            return _error(400, f"the model cannot classify inputs of shape {inputs.shape}: "
                               f"{' '.join(str(err).split())[:200]}")
        return JSONResponse({"probs": encode_array(probs) if arrays else probs.tolist()},
                            headers={ARRAYS_HEADER: "base64"})

    async def stats(self, request: HttpRequest) -> JSONResponse:
        return JSONResponse({"inputs": self.inputs, "calls": self.calls,
                             "model_seconds": self.model_seconds})


class ClassifierServer:
    """A running classifier server (``start_classifier_server``).

    Attributes:
        url: the classify endpoint, ``http://host:port/classify`` (an ``http://`` spec).
    """

    def __init__(self, server: uvicorn.Server, app: _ClassifierApp, thread: threading.Thread,
                 address: tuple[str, int]) -> None:
        self._server, self._app, self._thread = server, app, thread
        self.host, self.port = address
        self.url = f"http://{self.host}:{self.port}/classify"

    def stats(self) -> dict:
        return {"inputs": self._app.inputs, "calls": self._app.calls,
                "model_seconds": self._app.model_seconds}

    def wait(self) -> None:
        while self._thread.is_alive():
            self._thread.join(0.5)

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join()

    def __enter__(self) -> ClassifierServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_classifier_server(target: Target, *, host: str = DEFAULT_HOST, port: int = 0,
                            max_body_bytes: int = MAX_CLASSIFY_BYTES) -> ClassifierServer:
    """Serve a local classifier target in a background thread; returns once it listens.
    A ``TorchClassifier`` is switched to its tuned forward (``tune = True``)."""
    if target.remote or "classify" not in target.capabilities:
        raise InputError(f"target {target.id} cannot be served as a classifier: give a "
                         f"classifier folder or torch:<file.py>:<factory>")
    if isinstance(target, TorchClassifier):
        target.tune = True
    sock = listening_socket(host, port)
    app = _ClassifierApp(target, max_body_bytes)
    config = uvicorn.Config(app.asgi, log_config=None, access_log=False, lifespan="off",
                            server_header=False, http="h11")
    server = uvicorn.Server(config)

    def run() -> None:
        try:
            asyncio.run(server.serve(sockets=[sock]))
        finally:
            sock.close()

    thread = threading.Thread(target=run, name="bbzo-serve-classifier", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.01)
    return ClassifierServer(server, app, thread, sock.getsockname()[:2])
