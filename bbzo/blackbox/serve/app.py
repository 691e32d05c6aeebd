"""``bbzo serve``: an OpenAI-compatible HTTP server in front of a local model (Starlette on
uvicorn, in a background thread with its own event loop).

Endpoints: ``GET /v1/models`` (the names the server answers to), ``POST /v1/chat/completions``
(``protocol``), ``POST /v1/completions`` (``completions``) and ``GET /bbzo/stats``
(``stats.ServerStats.snapshot``: what the server received and answered). Every error is JSON in
OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 404 for unknown paths, 405
(with ``Allow``) for wrong methods.

One worker thread owns the model (``batcher``). A completion goes: optional bearer-key check
(constant-time; 401), body read (at most ``max_body_bytes``: 413; within ``BODY_S``: 408),
JSON checks (``bodies``; 400), logged in the stats, fields checked (400 naming the bad field;
``max_tokens`` at most the model's context), held while the server is on ``hold()``, fault
injection (``faults``), the queue limit (``max_queue`` jobs waiting or running at the model;
503 with ``Retry-After`` beyond), the model under a deadline (``deadlines``; past it the
generation is stopped between two tokens and the client gets 504 ``deadline_exceeded``). A
client that hangs up is noticed at once: its request is dropped from the queue or its
generation stopped, and nothing is answered (``abandoned`` in the stats).

Binds 127.0.0.1 unless told otherwise (IPv4 only). Logs name method, path and status at most,
never headers, so the API key cannot reach them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import Response
from starlette.routing import Route

from bbzo.blackbox.protocol import canonical_json
from bbzo.blackbox.serve.batcher import Batcher
from bbzo.blackbox.serve.bodies import parse_json
from bbzo.blackbox.serve.completions import completion_reply, parse_completion
from bbzo.blackbox.serve.deadlines import Deadlines, measure_token_seconds
from bbzo.blackbox.serve.faults import TIMEOUT_STATUS, FaultInjector, Faults
from bbzo.blackbox.serve.protocol import INT64, ApiError, chat_reply, parse_chat
from bbzo.blackbox.serve.stats import ABANDONED, ServerStats
from bbzo.blackbox.targets.base import Target
from bbzo.errors import InputError

log = logging.getLogger(__name__)
DEFAULT_HOST = "127.0.0.1"
MAX_BODY_BYTES = 1 << 20
MAX_QUEUE = 64
DRAIN_BYTES = 8 << 20  # past the body limit, read (and drop) this much more before the 413
IDLE_S = 120  # seconds an idle keep-alive connection stays open
BODY_S = 120  # seconds a client may take to send its body (408 beyond)
QUEUE_RETRY_AFTER_S = 1


def _json(status: int, data: object, headers: dict[str, str] | None = None) -> Response:
    # json.dumps as is: logprobs may be -inf, written as -Infinity (Python clients read it).
    return Response(json.dumps(data), status, headers, media_type="application/json")


def _error(err: ApiError, headers: dict[str, str] | None = None) -> Response:
    return _json(err.status, err.body(), headers)


async def _watch(receive: Callable, gone: asyncio.Event) -> None:
    """Set ``gone`` when the client disconnects (call once the body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


async def _first(*waits: Any) -> None:
    """Wait until the first of ``waits`` (awaitables) finishes; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def served_names(target: Target, spec: str | None = None,
                 model_name: str | None = None) -> list[str]:
    """The model names a server of ``target`` answers to, the one it shows first.

    With ``model_name``: only that name. Otherwise the short name of the target id
    (``hf:<name>:<dtype>``) when it is a registry alias (e.g. ``smollm2-135m-instruct``), else
    the ``spec`` (or the target id); then the spec, ``hf:<name>`` and the target id.
    """
    if model_name is not None:
        return [model_name]
    scheme, colon, body = target.id.partition(":")
    if not colon:
        return list(dict.fromkeys([target.id, spec or target.id]))
    short = body.rsplit(":", 1)[0] if ":" in body else body
    alias = "/" not in short and "\\" not in short
    names = [short] if alias else []
    names += [spec or target.id, f"{scheme}:{short}", target.id]
    return list(dict.fromkeys(names))


class _App:
    """State shared by every request of one server; its methods run on the server's loop."""

    def __init__(self, target: Target, names: list[str], api_key: str | None,
                 faults: Faults | None, logprobs: bool, max_body_bytes: int, seed: int,
                 max_queue: int, deadlines: Deadlines | None) -> None:
        self.names = names
        self.api_key = api_key.encode() if api_key else None
        self.injector = FaultInjector(faults)
        self.logprobs = logprobs
        self.max_body_bytes = max_body_bytes
        self.max_queue = max_queue
        self.context = getattr(target, "max_length", None) or INT64 - 1
        self.stats = ServerStats()
        self.batcher = Batcher(target)
        self.deadlines = deadlines or Deadlines(measure_token_seconds(self.batcher),
                                                self.batcher.max_batch)
        self.door = asyncio.Event()  # open unless held; used on the server's loop only
        self.door.set()
        self.stopping = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._seeds = random.Random(seed)
        self._seed_lock = threading.Lock()
        self.asgi = Starlette(routes=[
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/bbzo/stats", self.snapshot, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ], exception_handlers={HTTPException: self.http_error, Exception: self.server_error})

    def draw_seed(self) -> int:
        with self._seed_lock:
            return self._seeds.getrandbits(63)

    def on_loop(self, action: Callable[[], object]) -> None:
        """Run ``action`` on the server's loop (from any thread)."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(action)

    # ---- routes --------------------------------------------------------------------------

    async def models(self, request: HttpRequest) -> Response:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "bbzo"}
                for name in self.names]
        return self._simple(request, {"object": "list", "data": data})

    async def snapshot(self, request: HttpRequest) -> Response:
        return self._simple(request, None)

    async def chat(self, request: HttpRequest) -> Response:
        return await self._completion(request, parse_chat, chat_reply)

    async def completions(self, request: HttpRequest) -> Response:
        return await self._completion(request, parse_completion, completion_reply)

    async def http_error(self, request: HttpRequest, exc: Exception) -> Response:
        """404 and 405 from the router, as OpenAI-style JSON."""
        assert isinstance(exc, HTTPException)
        self.stats.receive()
        self.stats.status(exc.status_code)
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 405:
            allow = (exc.headers or {}).get("Allow", "")
            err = ApiError(405, f"method not allowed: {where}; use {allow}",
                           code="method_not_allowed")
        elif exc.status_code == 404:
            err = ApiError(404, f"no route {where}", code="not_found")
        else:
            err = ApiError(exc.status_code, str(exc.detail))
        return _error(err, dict(exc.headers or {}))

    async def server_error(self, request: HttpRequest, exc: Exception) -> Response:
        log.error("error while serving %s %s", request.method, request.url.path,
                  exc_info=(type(exc), exc, exc.__traceback__))
        return _error(ApiError(500, "internal server error; see the server log",
                               kind="server_error"))

    def _simple(self, request: HttpRequest, data: dict | None) -> Response:
        """A GET answer (``data``, or the stats when None) after the key check."""
        self.stats.receive()
        try:
            self._authorize(request)
        except ApiError as err:
            self.stats.status(err.status)
            return _error(err)
        response = _json(200, self.stats.snapshot() if data is None else data)
        self.stats.status(200)
        return response

    # ---- one completion ------------------------------------------------------------------

    async def _completion(self, request: HttpRequest, parse: Callable,
                          reply: Callable) -> Response:
        self.stats.receive()
        try:
            self._authorize(request)
            body = parse_json(await asyncio.wait_for(self._read_body(request), BODY_S))
        except asyncio.TimeoutError:
            err = ApiError(408, f"the body did not arrive within {BODY_S} s",
                           code="request_timeout")
            self.stats.status(408)
            return _error(err, {"Connection": "close"})
        except ApiError as err:
            self.stats.status(err.status)
            return _error(err, {"Connection": "close"} if err.status in (401, 413) else None)
        key = hashlib.sha256(canonical_json(body).encode()).hexdigest()
        arrival, k = self.stats.arrive(time.monotonic(), key)
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch(request.receive, gone))
        status: int | str = ABANDONED
        tokens, response = 0, Response(status_code=499)  # 499: not sent, the client left
        try:
            status, tokens, response = await self._run(body, key, k, gone, parse, reply)
        finally:
            watcher.cancel()
            self.stats.finish(arrival, status, tokens)
        return response

    async def _run(self, body: object, key: str, k: int, gone: asyncio.Event, parse: Callable,
                   reply: Callable) -> tuple[int | str, int, Response]:
        """(status or "abandoned", tokens, answer) of the ``k``-th arrival of a body."""
        try:
            call = parse(body, self.names, self.draw_seed, logprobs_supported=self.logprobs,
                         context=self.context)
        except ApiError as err:
            return err.status, 0, _error(err)
        with self.stats.holding():
            await self.door.wait()
        decision = self.injector.decide(key, k)
        pause = decision.delay_s + decision.hang_s
        if pause > 0:
            await _first(asyncio.sleep(pause), self.stopping.wait())
        if decision.status is not None:
            retry = decision.retry_after_s
            message = ("timed out" if decision.status == TIMEOUT_STATUS
                       else f"injected fault {decision.status}")
            headers = {} if retry is None else {"Retry-After": f"{math.ceil(retry * 1e3) / 1e3:g}"}
            err = ApiError(decision.status, message, code="injected")
            return decision.status, 0, _error(err, headers)
        if gone.is_set():
            return ABANDONED, 0, Response(status_code=499)
        if self.batcher.pending >= self.max_queue:
            err = ApiError(503, f"the server is busy: {self.max_queue} requests queued; retry "
                                f"after {QUEUE_RETRY_AFTER_S} s", code="queue_full",
                           kind="server_error")
            return 503, 0, _error(err, {"Retry-After": str(QUEUE_RETRY_AFTER_S)})
        return await self._model(call, gone, reply)

    async def _model(self, call: Any, gone: asyncio.Event,
                     reply: Callable) -> tuple[int | str, int, Response]:
        """Run ``call`` on the model under its deadline, watching for the client leaving."""
        deadline = self.deadlines.seconds(call.max_tokens, len(call.requests))
        cancel = threading.Event()
        future = asyncio.wrap_future(self.batcher.submit(call.requests, cancel))
        await _first(asyncio.shield(future), gone.wait(), self.stopping.wait(),
                     asyncio.sleep(deadline))
        if not future.done():
            cancel.set()  # the worker drops the job or stops it at the next token
            future.add_done_callback(lambda f: f.exception())  # no "never retrieved" warning
            if gone.is_set():
                return ABANDONED, 0, Response(status_code=499)
            if self.stopping.is_set():
                err = ApiError(503, "the server is shutting down", kind="server_error")
                return 503, 0, _error(err)
            err = ApiError(504, f"the completion passed its deadline of {deadline:.3g} s and "
                                f"was stopped; lower max_tokens or retry later",
                           code="deadline_exceeded", kind="server_error")
            return 504, 0, _error(err)
        try:
            responses = future.result()
        except InputError as err:
            return 400, 0, _error(ApiError(400, str(err)))
        except Exception:
            log.exception("model call failed")
            err = ApiError(500, "the model failed; see the server log", kind="server_error")
            return 500, 0, _error(err)
        if gone.is_set():
            return ABANDONED, 0, Response(status_code=499)
        answer = reply(call, responses)
        return 200, answer["usage"]["total_tokens"], _json(200, answer)

    # ---- HTTP plumbing -------------------------------------------------------------------

    def _authorize(self, request: HttpRequest) -> None:
        key = self.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key)):
            raise ApiError(401, "missing or incorrect API key; send 'Authorization: Bearer "
                                "<key>'", code="invalid_api_key")

    async def _read_body(self, request: HttpRequest) -> bytes:
        """The body, at most ``max_body_bytes`` (413 beyond, after draining a bounded
        remainder so the client can read the answer)."""
        limit = self.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + DRAIN_BYTES:
            raise self._too_large(int(declared))
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            elif size > limit + DRAIN_BYTES:
                break
        if size > limit:
            raise self._too_large(size)
        return b"".join(chunks)

    def _too_large(self, size: int) -> ApiError:
        return ApiError(413, f"the body has {size} bytes or more, over the limit of "
                             f"{self.max_body_bytes}", code="request_too_large")


class ServerHandle:
    """A running server (from ``start_server``).

    Attributes:
        host: the bound address.
        port: the bound port.
        url: the OpenAI base URL, ``http://host:port/v1``.
        names: the model names it answers to (``/v1/models``).
    """

    def __init__(self, server: uvicorn.Server, app: _App, thread: threading.Thread,
                 address: tuple[str, int]) -> None:
        self._server = server
        self._app = app
        self._thread = thread
        self.host, self.port = address
        self.url = f"http://{self.host}:{self.port}/v1"
        self.names = list(app.names)
        self._closed = False

    @property
    def deadlines(self) -> Deadlines:
        """The deadline policy in force (measured token rate included)."""
        return self._app.deadlines

    def stats(self) -> dict:
        """What the server received and answered (``ServerStats.snapshot``)."""
        return self._app.stats.snapshot()

    def hold(self) -> None:
        """Hold new completions at the door (logged, not run) until ``release()``."""
        self._app.on_loop(self._app.door.clear)

    def release(self) -> None:
        """Let held completions go on."""
        self._app.on_loop(self._app.door.set)

    def wait(self) -> None:
        """Block until the server is closed (or the caller is interrupted)."""
        while self._thread.is_alive():
            self._thread.join(0.5)

    def close(self) -> None:
        """Stop serving: waiting requests wake at once, generations stop at the next token.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._app.on_loop(self._app.stopping.set)
        self._app.on_loop(self._app.door.set)
        self._server.should_exit = True
        self._thread.join()
        self._app.batcher.close()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo \
            or (hi is not None and value > hi):
        upper = "" if hi is None else f"..{hi}"
        raise InputError(f"{name} must be an integer in {lo}{upper or ' or more'}, "
                         f"got {value!r}")


def _run_loop(server: uvicorn.Server, sock: socket.socket, app: _App) -> None:
    loop = asyncio.new_event_loop()
    app.loop = loop
    try:
        loop.run_until_complete(server.serve(sockets=[sock]))
    finally:
        loop.close()
        sock.close()


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` and listening (port 0: a free one); InputError
    naming the address when it cannot be had. Every bbzo server binds through this."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


def start_server(target: Target, *, host: str = DEFAULT_HOST, port: int = 0,
                 api_key: str | None = None, model_name: str | None = None,
                 faults: Faults | None = None, logprobs: bool = True,
                 max_body_bytes: int = MAX_BODY_BYTES, seed: int = 0,
                 max_queue: int = MAX_QUEUE, request_timeout: float | None = None,
                 spec: str | None = None) -> ServerHandle:
    """Serve ``target`` in a background thread; return once it listens, with a
    ``ServerHandle``.

    Args:
        target: a local target that answers ``chat`` requests (e.g. ``HFTarget``).
        host: address to bind (IPv4); 127.0.0.1 keeps the server private to this machine.
        port: port to bind; 0 picks a free one (read it from the handle).
        api_key: when set, every request must send ``Authorization: Bearer <api_key>``.
        model_name: the only model name clients may send (default: see ``served_names``).
        faults: fault injection (``Faults``); None: none.
        logprobs: False answers ``"logprobs": null`` always, like APIs without logprobs.
        max_body_bytes: largest request body accepted (413 beyond).
        seed: seed of the sampling seeds drawn for bodies that carry none.
        max_queue: most completions waiting or running at the model; more get 503 with
            ``Retry-After``.
        request_timeout: seconds a completion may take at the model before it is stopped and
            answered 504; None derives it from ``max_tokens`` and a token rate measured now
            (``deadlines``).
        spec: the target spec it was loaded from (one of the names it answers to).
    """
    if target.remote or "chat" not in target.capabilities:
        raise InputError(f"target {target.id} cannot be served: bbzo serve needs a local "
                         f"target that answers chat requests (e.g. hf:<model>)")
    _check_int("port", port, 0, 65535)
    _check_int("max_body_bytes", max_body_bytes, 1)
    _check_int("max_queue", max_queue, 1)
    if api_key is not None and not (isinstance(api_key, str) and api_key
                                    and api_key == api_key.strip()):
        raise InputError("api_key must be a non-empty string without surrounding spaces, or "
                         "None for no authentication")
    if model_name is not None and not (isinstance(model_name, str) and model_name.strip()):
        raise InputError(f"model_name must be a non-empty string or None, got {model_name!r}")
    fixed = Deadlines(1.0, 1, request_timeout)  # checks request_timeout before any work
    sock = listening_socket(host, port)
    try:
        app = _App(target, served_names(target, spec, model_name), api_key, faults, logprobs,
                   max_body_bytes, seed, max_queue,
                   None if request_timeout is None else fixed)
    except BaseException:
        sock.close()
        raise
    config = uvicorn.Config(app.asgi, log_config=None, access_log=False, lifespan="off",
                            timeout_keep_alive=IDLE_S, timeout_graceful_shutdown=2,
                            server_header=False, http="h11")
    server = uvicorn.Server(config)
    address = sock.getsockname()[:2]
    thread = threading.Thread(target=_run_loop, args=(server, sock, app),
                              name="bbzo-serve-http", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.01)
    if not server.started:
        app.batcher.close()
        raise InputError(f"the server on {host}:{port} failed to start; see the log")
    if api_key is None and host not in (DEFAULT_HOST, "localhost"):
        log.warning("serving on %s with no API key: anyone who can reach it may use it", host)
    return ServerHandle(server, app, thread, address)
