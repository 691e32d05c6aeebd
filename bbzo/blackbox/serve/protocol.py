"""OpenAI's chat-completions wire format: a request body in, bbzo ``Request``s; answers out.

A body becomes one ``Request("chat", {"messages"}, params)`` per choice (``sample`` = choice
index), with ``params`` = ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop`` (a
string or a list of up to 4, passed on as a list) and, when asked, ``logprobs``/``top_logprobs``.
Every field is checked; a bad one is an ``ApiError`` (HTTP 400) whose ``param`` names it, as
OpenAI does. Unknown fields are refused rather than ignored, so a client never believes a
setting (``tools``, ``response_format``...) took effect when it did not.

Without ``max_tokens``/``max_completion_tokens`` a completion stops after 64 tokens
(``DEFAULT_MAX_TOKENS``). A body without ``seed`` gets one drawn by the server, so two
identical unseeded bodies are two independent draws (as with OpenAI); a body with ``seed`` is
answered identically every time. Token ``bytes`` are the UTF-8 bytes of the decoded token text
(a token holding part of a multi-byte character decodes to U+FFFD, whose bytes are reported).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from bbzo.blackbox.protocol import Request, Response
from bbzo.blackbox.targets.stops import parse_stop
from bbzo.errors import InputError

FIELDS = frozenset({"model", "messages", "max_tokens", "max_completion_tokens", "temperature",
                    "top_p", "n", "seed", "stop", "logprobs", "top_logprobs", "stream",
                    "user"})
ROLES = frozenset({"system", "developer", "user", "assistant"})
DEFAULT_MAX_TOKENS = 64
MAX_N = 128  # OpenAI's limit on choices per request
MAX_TOP_LOGPROBS = 20
_INT64 = 2 ** 63


class ApiError(Exception):
    """An error answered as OpenAI-style JSON.

    Args:
        status: HTTP status.
        message: one line for the client.
        param: the request field at fault, or None.
        code: a machine-readable code (``invalid_api_key``, ``model_not_found``...), or None.
        kind: OpenAI's error ``type``.
    """

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


def _bad(param: str, why: str) -> ApiError:
    return ApiError(400, f"invalid '{param}': {why}", param=param)


def _integer(body: dict, name: str, lo: int, hi: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(name, f"expected an integer in [{lo}, {hi}], got {value!r}")
    return value


def _number(body: dict, name: str, lo: float, hi: float, open_low: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) and (lo < value if open_low else lo <= value) and value <= hi
    if not ok:
        low = "(" if open_low else "["
        raise _bad(name, f"expected a number in {low}{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _content(i: int, content: object) -> str:
    """A message's text: a string, or a list of ``{"type": "text", "text": str}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content):
        return "".join(p["text"] for p in content)
    raise _bad(f"messages[{i}].content", "expected a string or a list of text parts")


def _messages(value: object) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _bad("messages", "expected a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}]", "expected an object with role and content")
        if m.get("role") not in ROLES:
            raise _bad(f"messages[{i}].role", f"expected one of {', '.join(sorted(ROLES))}, "
                                              f"got {m.get('role')!r}")
        out.append({"role": m["role"], "content": _content(i, m.get("content"))})
    return out


@dataclass(frozen=True)
class ChatCall:
    """A parsed chat-completions body.

    Attributes:
        requests: one ``chat`` request per choice.
        logprobs: whether the reply carries per-token logprobs.
    """

    requests: list[Request]
    logprobs: bool


def parse_chat(body: object, model: str, draw_seed: Callable[[], int], *,
               logprobs_supported: bool = True) -> ChatCall:
    """Check a chat-completions ``body`` for the served ``model``; ``ApiError`` if it is bad.

    ``draw_seed()`` gives the seed of a body that has none. With ``logprobs_supported`` False
    the server ignores ``logprobs`` (answers ``"logprobs": null``), like APIs that lack them.
    """
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    for name in body:
        if name not in FIELDS:
            raise _bad(name, f"unsupported parameter; this server accepts "
                             f"{', '.join(sorted(FIELDS))}")
    if not isinstance(body.get("model"), str):
        raise _bad("model", "expected the model name (a string)")
    if body["model"] != model:
        raise ApiError(404, f"the model {body['model']!r} does not exist; this server has "
                            f"{model!r}", param="model", code="model_not_found")
    messages = _messages(body.get("messages"))
    if body.get("stream") not in (None, False):
        raise _bad("stream", "streaming is not supported; leave it false")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise _bad("user", "expected a string")
    max_tokens = _integer(body, "max_tokens", 1, _INT64 - 1)
    max_completion = _integer(body, "max_completion_tokens", 1, _INT64 - 1)
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise _bad("max_completion_tokens", "differs from max_tokens; send only one")
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0, open_low=True)
    n = _integer(body, "n", 1, MAX_N) or 1
    seed = _integer(body, "seed", -_INT64, _INT64 - 1)
    want = body.get("logprobs")
    if want is not None and not isinstance(want, bool):
        raise _bad("logprobs", f"expected true or false, got {want!r}")
    top = _integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top is not None and not want:
        raise _bad("top_logprobs", "needs logprobs set to true")
    try:
        stop = parse_stop(body.get("stop"))
    except InputError as err:
        raise _bad("stop", str(err)) from None
    params: dict = {"max_tokens": max_completion or max_tokens or DEFAULT_MAX_TOKENS,
                    "seed": draw_seed() if seed is None else seed}
    if temperature is not None:
        params["temperature"] = temperature
    if top_p is not None:
        params["top_p"] = top_p
    if stop:
        params["stop"] = list(stop)
    with_logprobs = bool(want) and logprobs_supported
    if with_logprobs:
        params.update(logprobs=True, top_logprobs=top or 0)
    return ChatCall([Request("chat", {"messages": messages}, params, sample=i)
                     for i in range(n)], with_logprobs)


def _token(text: str, logprob: float) -> dict:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def chat_reply(model: str, call: ChatCall, responses: list[Response]) -> dict:
    """The chat-completions JSON for ``call`` answered by ``responses`` (one per choice)."""
    choices = []
    for i, r in enumerate(responses):
        logprobs = None
        if call.logprobs:
            logprobs = {"content": [
                {**_token(t["token"], t["logprob"]),
                 "top_logprobs": [_token(a, v) for a, v in t["top"].items()]}
                for t in r.output["logprobs"]]}
        choices.append({"index": i, "message": {"role": "assistant",
                                                "content": r.output["text"]},
                        "logprobs": logprobs, "finish_reason": r.output["finish_reason"]})
    prompt = responses[0].usage.prompt_tokens
    completion = sum(r.usage.completion_tokens for r in responses)
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": model, "choices": choices,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}}
