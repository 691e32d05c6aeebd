"""``bbzo serve``: an OpenAI-compatible HTTP server in front of a local model (stdlib only).

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (see ``protocol``) and
``GET /bbzo/stats`` (``stats.ServerStats.snapshot``: what the server received and answered).

Each connection gets a thread (``ThreadingHTTPServer``, HTTP/1.1 keep-alive); one worker thread
owns the model (``batcher``). A chat completion goes: optional bearer-key check (constant-time;
401), body read (at most ``max_body_bytes``; 413), logged in the stats, checked (400 naming the
bad field), held while the server is on ``hold()``, fault injection (``faults``), the model. A
request whose client has hung up is not run, nor answered (``abandoned``).

Binds 127.0.0.1 unless told otherwise (IPv4 only). Logs name method, path and status, never
headers, so the API key cannot reach them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import random
import select
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bbzo.blackbox.protocol import canonical_json
from bbzo.blackbox.serve.batcher import Batcher
from bbzo.blackbox.serve.faults import TIMEOUT_STATUS, FaultInjector, Faults
from bbzo.blackbox.serve.protocol import ApiError, chat_reply, parse_chat
from bbzo.blackbox.serve.stats import ABANDONED, ServerStats
from bbzo.blackbox.targets.base import Target
from bbzo.errors import InputError

log = logging.getLogger(__name__)
DEFAULT_HOST = "127.0.0.1"
MAX_BODY_BYTES = 1 << 20


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


class _App:
    """State shared by every handler thread of one server."""

    def __init__(self, target: Target, model: str, api_key: str | None, faults: Faults | None,
                 logprobs: bool, max_body_bytes: int, seed: int) -> None:
        self.model = model
        self.api_key = api_key.encode() if api_key else None
        self.injector = FaultInjector(faults)
        self.logprobs = logprobs
        self.max_body_bytes = max_body_bytes
        self.stats = ServerStats()
        self.batcher = Batcher(target)
        self.stopping = threading.Event()
        self.open = threading.Event()
        self.open.set()
        self._seeds = random.Random(seed)
        self._seed_lock = threading.Lock()

    def draw_seed(self) -> int:
        with self._seed_lock:
            return self._seeds.getrandbits(63)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bbzo-serve"
    sys_version = ""
    timeout = 120  # seconds a connection may sit idle or stall mid-body before it is closed
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

    @property
    def app(self) -> _App:
        return self.server.app  # type: ignore[attr-defined]

    # ---- routing ---------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self.app.stats.receive()
        routes = {"/v1/models": self._models, "/bbzo/stats": self.app.stats.snapshot}
        self._simple(routes.get(self.path.split("?")[0]))

    def do_POST(self) -> None:  # noqa: N802
        self.app.stats.receive()
        if self.path.split("?")[0] != "/v1/chat/completions":
            self._simple(None)
            return
        try:
            self._authorize()
            body = self._read_json()
        except ApiError as err:
            self.app.stats.status(self._send_error(err))
            return
        key = hashlib.sha256(canonical_json(body).encode()).hexdigest()
        arrival, k = self.app.stats.arrive(time.monotonic(), key)
        status, tokens = ABANDONED, 0
        try:
            status, tokens = self._complete(body, key, k)
        finally:
            self.app.stats.finish(arrival, status, tokens)

    def _simple(self, route: Any) -> None:
        """Answer a GET-style route (a function returning JSON data), or 404."""
        try:
            self._authorize()
            if route is None:
                raise ApiError(404, f"no route {self.command} {self.path}", code="not_found")
        except ApiError as err:
            self.app.stats.status(self._send_error(err))
            return
        self._send_json(200, route())
        self.app.stats.status(200)

    def _models(self) -> dict:
        return {"object": "list", "data": [{"id": self.app.model, "object": "model",
                                            "created": 0, "owned_by": "bbzo"}]}

    # ---- one chat completion ---------------------------------------------------------------

    def _complete(self, body: object, key: str, k: int) -> tuple[int | str, int]:
        """Answer the ``k``-th arrival of a body; return (status or "abandoned", tokens)."""
        app = self.app
        try:
            call = parse_chat(body, app.model, app.draw_seed, logprobs_supported=app.logprobs)
        except ApiError as err:
            return self._send_error(err), 0
        with app.stats.holding():
            app.open.wait()
        decision = app.injector.decide(key, k)
        app.stopping.wait(decision.delay_s + decision.hang_s)
        if decision.status is not None:
            retry = decision.retry_after_s
            message = ("timed out" if decision.status == TIMEOUT_STATUS
                       else f"injected fault {decision.status}")
            headers = {} if retry is None else {"Retry-After": f"{math.ceil(retry * 1e3) / 1e3:g}"}
            return self._send_error(ApiError(decision.status, message, code="injected"),
                                    headers), 0
        if self._peer_gone():
            return ABANDONED, 0
        try:
            responses = app.batcher.submit(call.requests).result()
        except InputError as err:
            return self._send_error(ApiError(400, str(err))), 0
        except Exception:
            log.exception("model call failed")
            return self._send_error(ApiError(500, "the model failed; see the server log",
                                             kind="server_error")), 0
        reply = chat_reply(app.model, call, responses)
        if self._peer_gone() or not self._send_json(200, reply):
            return ABANDONED, 0
        return 200, reply["usage"]["total_tokens"]

    # ---- HTTP plumbing ---------------------------------------------------------------------

    def _authorize(self) -> None:
        key = self.app.api_key
        if key is None:
            return
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key)):
            self.close_connection = True  # the unread body must not be parsed as a request
            raise ApiError(401, "missing or incorrect API key; send 'Authorization: Bearer "
                                "<key>'", code="invalid_api_key")

    def _read_json(self) -> object:
        keep = self.close_connection
        self.close_connection = True  # until the whole body is read
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(400, "chunked bodies are not supported; send Content-Length")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        if length < 0:
            raise ApiError(411, "a Content-Length header is required")
        if length > self.app.max_body_bytes:
            raise ApiError(413, f"the body has {length} bytes, over the limit of "
                                f"{self.app.max_body_bytes}", code="request_too_large")
        raw = self.rfile.read(length)
        self.close_connection = keep
        try:
            return json.loads(raw, parse_constant=_no_constant)
        except (ValueError, RecursionError) as err:
            raise ApiError(400, f"the body is not valid JSON: {err}") from None

    def _peer_gone(self) -> bool:
        """True when the client closed its connection (it waits silently otherwise)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _send_error(self, err: ApiError, headers: dict[str, str] | None = None) -> int:
        """Write an error answer (a failed write is the gone client's loss); return its
        status."""
        self._send_json(err.status, err.body(), headers)
        return err.status

    def _send_json(self, status: int, obj: object, headers: dict[str, str] | None = None) -> bool:
        """Write a JSON answer; False if the connection failed while writing."""
        data = json.dumps(obj).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True
            return False
        return True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s %s", self.client_address[0], format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up is routine; anything else is logged with its traceback."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("client %s hung up", client_address[0])
        else:
            log.exception("error while serving %s", client_address[0])

    def server_bind(self) -> None:
        # Skip HTTPServer's reverse DNS lookup of the host (slow on some machines).
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class ServerHandle:
    """A running server (from ``start_server``).

    Attributes:
        host: the bound address.
        port: the bound port.
        url: the OpenAI base URL, ``http://host:port/v1``.
    """

    def __init__(self, server: _Server, app: _App, thread: threading.Thread) -> None:
        self._server = server
        self._app = app
        self._thread = thread
        self.host, self.port = server.server_address[:2]
        self.url = f"http://{self.host}:{self.port}/v1"

    def stats(self) -> dict:
        """What the server received and answered (``ServerStats.snapshot``)."""
        return self._app.stats.snapshot()

    def hold(self) -> None:
        """Hold new chat completions at the door (logged, not run) until ``release()``."""
        self._app.open.clear()

    def release(self) -> None:
        """Let held chat completions go on."""
        self._app.open.set()

    def wait(self) -> None:
        """Block until the server is closed (or the caller is interrupted)."""
        self._thread.join()

    def close(self) -> None:
        """Stop serving; requests sleeping in fault delays wake up at once. Idempotent."""
        self._app.stopping.set()
        self._app.open.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
        self._app.batcher.close()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_server(target: Target, *, host: str = DEFAULT_HOST, port: int = 0,
                 api_key: str | None = None, model_name: str | None = None,
                 faults: Faults | None = None, logprobs: bool = True,
                 max_body_bytes: int = MAX_BODY_BYTES, seed: int = 0) -> ServerHandle:
    """Serve ``target`` in a background thread; return at once with a ``ServerHandle``.

    Args:
        target: a local target that answers ``chat`` requests (e.g. ``HFTarget``).
        host: address to bind (IPv4); 127.0.0.1 keeps the server private to this machine.
        port: port to bind; 0 picks a free one (read it from the handle).
        api_key: when set, every request must send ``Authorization: Bearer <api_key>``.
        model_name: the model name clients must send (default ``target.id``).
        faults: fault injection (``Faults``); None: none.
        logprobs: False answers ``"logprobs": null`` always, like APIs without logprobs.
        max_body_bytes: largest request body accepted (413 beyond).
        seed: seed of the sampling seeds drawn for bodies that carry none.
    """
    if target.remote or "chat" not in target.capabilities:
        raise InputError(f"target {target.id} cannot be served: bbzo serve needs a local "
                         f"target that answers chat requests (e.g. hf:<model>)")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InputError(f"port must be an integer in 0..65535, got {port!r}")
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) \
            or max_body_bytes < 1:
        raise InputError(f"max_body_bytes must be a positive integer, got {max_body_bytes!r}")
    if api_key is not None and not (isinstance(api_key, str) and api_key
                                    and api_key == api_key.strip()):
        raise InputError("api_key must be a non-empty string without surrounding spaces, or "
                         "None for no authentication")
    try:
        server = _Server((host, port), _Handler)
    except OSError as err:
        raise InputError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    app = _App(target, model_name or target.id, api_key, faults, logprobs, max_body_bytes, seed)
    server.app = app  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="bbzo-serve-http", daemon=True)
    thread.start()
    if api_key is None and host not in (DEFAULT_HOST, "localhost"):
        log.warning("serving on %s with no API key: anyone who can reach it may use it", host)
    return ServerHandle(server, app, thread)
