"""OpenAI's chat-completions wire format: a request body in, bbzo ``Request``s; answers out.

The checks shared with the legacy completions API (``completions``) live here too: the model
name, the sampling fields, the error shape.

A body becomes one ``Request("chat", {"messages"}, params)`` per choice (``sample`` = choice
index), with ``params`` = ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop`` (a
string or a list of up to 4, passed on as a list) and, when asked, ``logprobs``/``top_logprobs``.
Every field is checked; a bad one is an ``ApiError`` (HTTP 400) whose ``param`` names it, as
OpenAI does. Unknown fields are refused rather than ignored, so a client never believes a
setting (``tools``, ``response_format``...) took effect when it did not.

Without ``max_tokens``/``max_completion_tokens`` a completion stops after 64 tokens
(``DEFAULT_MAX_TOKENS``); more than the model's context (its positions) is a 400 naming the
field. The model name must be one of the names the server answers to (404 otherwise).
A body without ``seed`` gets one drawn by the server, so two
identical unseeded bodies are two independent draws (as with OpenAI); a body with ``seed`` is
answered identically every time. Token ``bytes`` are the UTF-8 bytes of the decoded token text
(a token holding part of a multi-byte character decodes to U+FFFD, whose bytes are reported).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Sequence
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
INT64 = 2 ** 63


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


def bad(param: str, why: str) -> ApiError:
    """A 400 naming the field ``param`` and what is wrong with it."""
    return ApiError(400, f"invalid '{param}': {why}", param=param)


def integer(body: dict, name: str, lo: int, hi: int) -> int | None:
    """``body[name]``: None when absent, else an integer in [lo, hi] (400 otherwise)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad(name, f"expected an integer in [{lo}, {hi}], got {value!r}")
    return value


def number(body: dict, name: str, lo: float, hi: float, open_low: bool = False) -> float | None:
    """``body[name]``: None when absent, else a finite number in the range (400 otherwise)."""
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) and (lo < value if open_low else lo <= value) and value <= hi
    if not ok:
        low = "(" if open_low else "["
        raise bad(name, f"expected a number in {low}{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _content(i: int, content: object) -> str:
    """A message's text: a string, or a list of ``{"type": "text", "text": str}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content):
        return "".join(p["text"] for p in content)
    raise bad(f"messages[{i}].content", "expected a string or a list of text parts")


def _messages(value: object) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise bad("messages", "expected a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}]", "expected an object with role and content")
        if not isinstance(m.get("role"), str) or m["role"] not in ROLES:
            raise bad(f"messages[{i}].role", f"expected one of {', '.join(sorted(ROLES))}, "
                                              f"got {m.get('role')!r}")
        out.append({"role": m["role"], "content": _content(i, m.get("content"))})
    return out


@dataclass(frozen=True)
class ChatCall:
    """A parsed chat-completions body.

    Attributes:
        requests: one ``chat`` request per choice.
        logprobs: whether the reply carries per-token logprobs.
        model: the model name the client sent (echoed in the answer).
        max_tokens: most tokens each choice may generate.
    """

    requests: list[Request]
    logprobs: bool
    model: str = ""
    max_tokens: int = DEFAULT_MAX_TOKENS


def check_fields(body: object, fields: frozenset[str]) -> dict:
    """``body`` as a JSON object holding only ``fields`` (400 otherwise)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    for name in body:
        if name not in fields:
            raise bad(name, f"unsupported parameter; this server accepts "
                            f"{', '.join(sorted(fields))}")
    return body


def served_model(body: dict, names: Sequence[str]) -> str:
    """The model name of ``body``, which must be one of ``names`` (404 otherwise)."""
    if not isinstance(body.get("model"), str):
        raise bad("model", "expected the model name (a string)")
    if body["model"] not in names:
        raise ApiError(404, f"the model {body['model']!r} does not exist; this server answers "
                            f"to {', '.join(map(repr, names))}", param="model",
                       code="model_not_found")
    return body["model"]


def sampling_params(body: dict, draw_seed: Callable[[], int], max_tokens: int) -> dict:
    """Target params from the shared sampling fields (``temperature``, ``top_p``, ``seed``,
    ``stop``; ``stream`` must be off, ``user`` a string)."""
    if body.get("stream") not in (None, False):
        raise bad("stream", "streaming is not supported; leave it false")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise bad("user", "expected a string")
    temperature = number(body, "temperature", 0.0, 2.0)
    top_p = number(body, "top_p", 0.0, 1.0, open_low=True)
    seed = integer(body, "seed", -INT64, INT64 - 1)
    try:
        stop = parse_stop(body.get("stop"))
    except InputError as err:
        raise bad("stop", str(err)) from None
    params: dict = {"max_tokens": max_tokens, "seed": draw_seed() if seed is None else seed}
    if temperature is not None:
        params["temperature"] = temperature
    if top_p is not None:
        params["top_p"] = top_p
    if stop:
        params["stop"] = list(stop)
    return params


def parse_chat(body: object, names: Sequence[str], draw_seed: Callable[[], int], *,
               logprobs_supported: bool = True, context: int = INT64 - 1) -> ChatCall:
    """Check a chat-completions ``body`` for a server answering to ``names``; ``ApiError`` if it
    is bad.

    ``draw_seed()`` gives the seed of a body that has none. With ``logprobs_supported`` False
    the server ignores ``logprobs`` (answers ``"logprobs": null``), like APIs that lack them.
    ``context``: the model's positions, the most tokens a completion may ask for.
    """
    body = check_fields(body, FIELDS)
    model = served_model(body, names)
    messages = _messages(body.get("messages"))
    max_tokens = integer(body, "max_tokens", 1, context)
    max_completion = integer(body, "max_completion_tokens", 1, context)
    if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
        raise bad("max_completion_tokens", "differs from max_tokens; send only one")
    n = integer(body, "n", 1, MAX_N) or 1
    want = body.get("logprobs")
    if want is not None and not isinstance(want, bool):
        raise bad("logprobs", f"expected true or false, got {want!r}")
    top = integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top is not None and not want:
        raise bad("top_logprobs", "needs logprobs set to true")
    limit = max_completion or max_tokens or min(DEFAULT_MAX_TOKENS, context)
    params = sampling_params(body, draw_seed, limit)
    with_logprobs = bool(want) and logprobs_supported
    if with_logprobs:
        params.update(logprobs=True, top_logprobs=top or 0)
    return ChatCall([Request("chat", {"messages": messages}, params, sample=i)
                     for i in range(n)], with_logprobs, model, limit)


def _token(text: str, logprob: float) -> dict:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def chat_reply(call: ChatCall, responses: list[Response]) -> dict:
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
            "created": int(time.time()), "model": call.model, "choices": choices,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}}
