"""OpenAI's legacy completions wire format (``POST /v1/completions``), enough for
lm-evaluation-harness's ``local-completions`` model.

``prompt`` is a string, a list of strings, a list of token ids or a list of such lists; each
prompt becomes ``n`` ``Request("generate", {"prompt"}, params)`` (``sample`` = 0..n-1), choice
``index`` = prompt index * n + sample. ``max_tokens`` defaults to 16 (OpenAI's default) and may
be 0 only with ``echo``. ``logprobs: k`` (0..20) answers each token's log-probability and its
``k`` best alternatives in the legacy shape ``{"tokens", "token_logprobs", "top_logprobs",
"text_offset"}``. With ``echo`` the answer's text starts with the prompt and, with ``logprobs``,
its tokens come first: the first prompt token has no context, so its ``token_logprobs`` and
``top_logprobs`` entries are None. ``text_offset`` is each token's character offset in the
choice's text, counted over the decoded token strings.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate

from bbzo.blackbox.protocol import Request, Response
from bbzo.blackbox.serve.protocol import (
    INT64,
    MAX_N,
    MAX_TOP_LOGPROBS,
    bad,
    check_fields,
    integer,
    sampling_params,
    served_model,
)

FIELDS = frozenset({"model", "prompt", "max_tokens", "temperature", "top_p", "n", "seed",
                    "stop", "logprobs", "echo", "stream", "user"})
DEFAULT_MAX_TOKENS = 16
MAX_PROMPTS = 128  # prompts per request


@dataclass(frozen=True)
class CompletionCall:
    """A parsed completions body.

    Attributes:
        requests: one ``generate`` request per choice (prompt-major).
        prompts: the prompts as sent (strings or token-id lists).
        logprobs: k best alternatives per token, or None for no logprobs.
        echo: whether each choice's text (and tokens) starts with its prompt.
        model: the model name the client sent.
        max_tokens: most tokens each choice may generate.
    """

    requests: list[Request]
    prompts: list[str | list[int]]
    logprobs: int | None
    echo: bool
    model: str
    max_tokens: int


def _token_ids(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t < INT64 for t in value)


def _prompts(value: object) -> list[str | list[int]]:
    if isinstance(value, str) or _token_ids(value):
        return [value]  # type: ignore[list-item]
    if isinstance(value, list) and 0 < len(value) <= MAX_PROMPTS and all(
            isinstance(p, str) or _token_ids(p) for p in value):
        return list(value)
    raise bad("prompt", f"expected a string, a list of token ids, or a list of 1 to "
                        f"{MAX_PROMPTS} of either")


def parse_completion(body: object, names: Sequence[str], draw_seed: Callable[[], int], *,
                     logprobs_supported: bool = True,
                     context: int = INT64 - 1) -> CompletionCall:
    """Check a completions ``body`` (arguments as in ``protocol.parse_chat``)."""
    body = check_fields(body, FIELDS)
    model = served_model(body, names)
    prompts = _prompts(body.get("prompt"))
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise bad("echo", f"expected true or false, got {echo!r}")
    max_tokens = integer(body, "max_tokens", 0, context)
    if max_tokens == 0 and not echo:
        raise bad("max_tokens", "0 generates nothing; it is allowed only with echo=true")
    limit = min(DEFAULT_MAX_TOKENS, context) if max_tokens is None else max_tokens
    n = integer(body, "n", 1, MAX_N) or 1
    k = integer(body, "logprobs", 0, MAX_TOP_LOGPROBS)
    k = k if logprobs_supported else None
    params = sampling_params(body, draw_seed, limit)
    if k is not None or echo:  # echo scores the prompt: its tokens come with the scores
        params.update(logprobs=True, top_logprobs=k or 0)
    if echo:
        params["prompt_logprobs"] = True
    requests = [Request("generate", {"prompt": p}, params, sample=j)
                for p in prompts for j in range(n)]
    return CompletionCall(requests, prompts, k, echo, model, limit)


def _logprobs(tokens: list[dict], k: int) -> dict:
    """The legacy logprobs object of ``tokens`` (``{"token", "logprob", "top"}``; logprob None
    for a token without context), offsets counted from the first token's start."""
    strings = [t["token"] for t in tokens]
    return {"tokens": strings,
            "token_logprobs": [t["logprob"] for t in tokens],
            "top_logprobs": [None if t["logprob"] is None else dict(list(t["top"].items())[:k])
                             for t in tokens],
            "text_offset": list(accumulate((len(s) for s in strings[:-1]), initial=0))
            if strings else []}


def completion_reply(call: CompletionCall, responses: list[Response]) -> dict:
    """The completions JSON for ``call`` answered by ``responses`` (one per choice)."""
    n = len(responses) // len(call.prompts)
    choices = []
    for i, r in enumerate(responses):
        prompt = call.prompts[i // n]
        head = ""
        tokens = list(r.output.get("logprobs") or [])
        if call.echo:
            echoed = r.output["prompt_logprobs"]
            head = prompt if isinstance(prompt, str) else "".join(t["token"] for t in echoed)
            tokens = echoed + tokens
        logprobs = None
        if call.logprobs is not None:
            logprobs = _logprobs(tokens, call.logprobs)
        choices.append({"text": head + r.output["text"], "index": i, "logprobs": logprobs,
                        "finish_reason": r.output["finish_reason"]})
    prompt_tokens = sum(r.usage.prompt_tokens for r in responses[::n])
    completion = sum(r.usage.completion_tokens for r in responses)
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": call.model, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                      "total_tokens": prompt_tokens + completion}}
