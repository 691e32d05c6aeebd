"""``OpenAITarget``: a chat model behind an OpenAI-compatible API (spec ``openai:<model>``).

Works with api.openai.com, ``bbzo serve`` and other compatible servers (``base_url``). The
official ``openai`` client is used with ``max_retries=0``: the query layer's ``RetryPolicy``
owns retries, so the two layers never multiply. The client lives on its own event-loop thread,
so it outlives the short-lived loops of ``QueryLayer.submit``.

Request kinds (payload/output as in ``bbzo.blackbox.protocol``):

- ``chat`` / ``generate``: one chat completion. ``params`` may hold ``max_tokens`` (sent as
  ``max_completion_tokens``), ``temperature``, ``top_p``, ``seed``, ``stop`` (a string or a
  list of up to 4; the text ends before the first), ``logprobs``, ``top_logprobs`` (0..20).
  A ``generate`` prompt is sent as one user message (the server applies its chat template; a
  local ``HFTarget`` does not for a bare prompt). Output
  ``{"text", "finish_reason", "logprobs"?}``, the logprobs as ``HFTarget`` gives them: per
  token ``{"token", "logprob", "top": {token: logprob}}``. Repeated draws (``sample`` > 0) of
  a seeded request get a seed derived from (seed, sample), so they differ.
- ``letter_logprobs``: one completion with ``max_completion_tokens=1``, ``logprobs=true``,
  ``top_logprobs=top_k`` at the answer position. A letter's log-probability is the logsumexp
  of its forms ``"A"`` and ``" A"`` found among the top-k (and the sampled token). A letter
  with no form there has ``coverage`` False and gets the **floor**: the smallest top-k
  log-probability, an upper bound on what any missing token can have (``meta["floor"]``).
  If the server returns no logprobs, a clearly flagged **sampling estimate** is used instead:
  ``fallback_samples`` one-token draws at temperature 1 (requests of at most 128 choices,
  OpenAI's limit on ``n``), each letter's count (its forms) smoothed by +1/2 over the letters
  and one "other" bucket, then logged (``meta["objective"] == "sampling-estimate"``,
  ``meta["samples"]``; coverage = drawn at least once). Once a server is seen without
  logprobs, later requests go straight to sampling. The estimate costs about
  ``fallback_samples`` completion tokens and one prompt per call, more than a budget's
  per-request token bound for ``letter_logprobs`` assumes.

Usage tokens come from the replies (summed over every call of a request). Cost is the query
layer's business (``PriceTable`` by ``target.model``). Replies are read as raw JSON (typed reply
objects cost about 1.4 ms of CPU each); a reply that is not a chat completion is a
``TargetError``.

Errors: HTTP 429 and 5xx, timeouts and dropped connections are ``TransientError`` (429 carries
``Retry-After``); 400/401/403/404 are ``PermanentError``. The API key never appears in ``id``,
in error messages (scrubbed) or in logs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import threading
import urllib.parse
from collections.abc import Coroutine
from typing import Any

import openai

from bbzo.blackbox.protocol import Request, Response, Usage, error_for_status, parse_retry_after
from bbzo.blackbox.targets.base import Target
from bbzo.blackbox.targets.stops import parse_stop
from bbzo.checks import int_at_least, positive
from bbzo.errors import InputError, TargetError, TransientError
from bbzo.redaction import REDACTED, redact_text

PARAMS = frozenset({"max_tokens", "temperature", "top_p", "seed", "stop", "logprobs",
                    "top_logprobs", "n"})
MAX_TOP_LOGPROBS = 20
MAX_CHOICES = 128  # OpenAI's limit on n, the choices of one request


def _safe_url(url: str) -> str:
    """``url`` without credentials, query or fragment (for the target id)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, "
                         f"got {url!r}")
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return f"{parts.scheme}://{host}{parts.path.rstrip('/')}"


def _messages(payload: dict) -> list[dict]:
    """The payload's messages, or its prompt as one user message."""
    if "messages" in payload:
        return payload["messages"]
    return [{"role": "user", "content": payload["prompt"]}]


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Body of the client's thread: run ``loop`` until stopped, then close it."""
    loop.run_forever()
    loop.close()


def _token_logprobs(choice: dict) -> list[dict] | None:
    """A choice's per-token logprobs (``choice.logprobs.content``), or None if absent."""
    logprobs = choice.get("logprobs")
    return logprobs.get("content") if isinstance(logprobs, dict) else None


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


class OpenAITarget(Target):
    """A chat model behind an OpenAI-compatible API.

    Args:
        model: the model name the API knows (``gpt-4o-mini``, or the name ``bbzo serve`` uses).
        base_url: the API root (``http://127.0.0.1:8000/v1``); None reads ``$OPENAI_BASE_URL``,
            and without it the client's default (api.openai.com).
        api_key: the key; None reads ``$OPENAI_API_KEY``.
        timeout_s: seconds before one HTTP call is given up (then retried by the layer).
        top_k: top logprobs asked for by ``letter_logprobs`` (1..20).
        fallback_samples: draws of the sampling estimate used when logprobs are missing.

    ``id`` is ``openai:<model>``, plus ``@<base_url>`` (no credentials) when one is given, so
    answers of different servers never mix in a ledger (a server moved to another port is
    another target). Call ``close()`` when done: it stops the client's thread.
    """

    capabilities = frozenset({"chat", "generate", "letter_logprobs"})
    remote = True
    max_batch = 1

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 timeout_s: float = 60.0, top_k: int = MAX_TOP_LOGPROBS,
                 fallback_samples: int = 32) -> None:
        if not isinstance(model, str) or not model.strip():
            raise InputError("model must be the API's model name, e.g. openai:gpt-4o-mini")
        timeout_s = positive("timeout_s", timeout_s)
        if isinstance(top_k, bool) or not isinstance(top_k, int) \
                or not 1 <= top_k <= MAX_TOP_LOGPROBS:
            raise InputError(f"top_k must be an integer in 1..{MAX_TOP_LOGPROBS}, got {top_k!r}")
        fallback_samples = int_at_least("fallback_samples", fallback_samples)
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        if not key:
            raise InputError("no API key: set OPENAI_API_KEY or pass api_key= (for a bbzo serve "
                             "without --api-key any non-empty string works)")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self.model = model.strip()
        self.base_url = None if base_url is None else _safe_url(base_url)
        self.id = f"openai:{self.model}" + (f"@{self.base_url}" if base_url else "")
        self.timeout_s = float(timeout_s)
        self.top_k = top_k
        self.fallback_samples = fallback_samples
        self._key = key
        self._base_url = base_url
        self._logprobs_missing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: openai.AsyncOpenAI | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAITarget({self.id!r})"

    # ---- checks --------------------------------------------------------------------------

    def check(self, request: Request) -> None:
        super().check(request)
        payload, params = request.payload, request.params
        if ("messages" in payload) == ("prompt" in payload):
            raise InputError("payload needs exactly one of 'prompt' (text) or 'messages' (list)")
        if "prompt" in payload and not isinstance(payload["prompt"], str):
            raise InputError("prompt must be a string")
        messages = payload.get("messages")
        if messages is not None and not (
                isinstance(messages, list) and messages
                and all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages)):
            raise InputError("messages must be a non-empty list of {role, content} objects")
        unknown = sorted(set(params) - PARAMS)
        if unknown:
            raise InputError(f"params {', '.join(unknown)} are not supported by {self.id}; use "
                             f"{', '.join(sorted(PARAMS))}")
        if params.get("n", 1) != 1:
            raise InputError("n must be 1: ask for repeated draws with new sample indices")
        parse_stop(params.get("stop"))
        k = params.get("top_logprobs")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int)
                              or not 0 <= k <= MAX_TOP_LOGPROBS):
            raise InputError(f"top_logprobs must be an integer in 0..{MAX_TOP_LOGPROBS}, "
                             f"got {k!r}")
        if request.kind == "letter_logprobs":
            letters = payload.get("letters")
            if not (isinstance(letters, list) and letters and len(set(letters)) == len(letters)
                    and all(isinstance(x, str) and x for x in letters)):
                raise InputError("letters must be a non-empty list of distinct non-empty strings")

    # ---- calls ---------------------------------------------------------------------------

    async def acall(self, request: Request) -> Response:
        """Answer one request (see the module doc); raises ``TransientError`` /
        ``PermanentError`` / ``TargetError`` for API failures and malformed replies."""
        self.check(request)
        try:
            if request.kind == "letter_logprobs":
                return await self._letters(request)
            return await self._complete(request)
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise TargetError(f"{self.id} sent a reply that is not a chat completion "
                              f"({type(err).__name__}: {err})") from None

    async def _complete(self, request: Request) -> Response:
        params = request.params
        options: dict[str, Any] = {}
        if "max_tokens" in params:
            options["max_completion_tokens"] = params["max_tokens"]
        for name in ("temperature", "top_p", "stop", "logprobs", "top_logprobs"):
            if name in params:
                options[name] = params[name]
        if "seed" in params:
            options["seed"] = self._seed(params["seed"], request.sample)
        reply = await self._create(_messages(request.payload), **options)
        choice = reply["choices"][0]
        output: dict[str, Any] = {"text": choice["message"].get("content") or "",
                                  "finish_reason": choice.get("finish_reason")}
        meta = {}
        if params.get("logprobs"):
            content = _token_logprobs(choice)
            output["logprobs"] = None if content is None else [
                {"token": t["token"], "logprob": float(t["logprob"]),
                 "top": self._top(t.get("top_logprobs"))} for t in content]
            if content is None:
                meta["logprobs"] = "the server returned none"
        return Response(output, self._usage(reply), meta=meta)

    async def _letters(self, request: Request) -> Response:
        messages = _messages(request.payload)
        letters = request.payload["letters"]
        if not self._logprobs_missing:
            reply = await self._create(messages, max_completion_tokens=1, logprobs=True,
                                       top_logprobs=self.top_k)
            content = _token_logprobs(reply["choices"][0])
            if content and content[0].get("top_logprobs"):
                return self._read_letters(letters, content[0], self._usage(reply))
            # No logprobs at all: this server has none, stop asking. An empty list (the model
            # answered its end-of-text at once) only sends this one request to sampling.
            self._logprobs_missing = content is None
            first = self._usage(reply)
        else:
            first = Usage()
        return await self._sample_letters(messages, letters, first)

    def _read_letters(self, letters: list[str], first: dict, usage: Usage) -> Response:
        """Letter log-probabilities from one position's top-k list (see the module doc)."""
        top = self._top(first["top_logprobs"])
        floor = min(top.values())
        seen = {**top, first["token"]: float(first["logprob"])}
        logprobs, coverage, forms = {}, {}, {}
        for letter in letters:
            found = [f for f in (letter, " " + letter) if f in seen]
            coverage[letter] = bool(found)
            forms[letter] = found
            logprobs[letter] = _logsumexp([seen[f] for f in found]) if found else floor
        meta = {"letter_combine": "logsumexp over token forms", "top_k": self.top_k,
                "floor": floor}
        return Response({"logprobs": logprobs, "coverage": coverage, "forms": forms}, usage,
                        meta=meta)

    async def _sample_letters(self, messages: list[dict], letters: list[str],
                              first: Usage) -> Response:
        """The sampling estimate: ``fallback_samples`` one-token draws at temperature 1."""
        counts = dict.fromkeys(letters, 0)
        total, prompt, completion = 0, first.prompt_tokens, first.completion_tokens
        for start in range(0, self.fallback_samples, MAX_CHOICES):
            n = min(MAX_CHOICES, self.fallback_samples - start)
            reply = await self._create(messages, max_completion_tokens=1, temperature=1.0, n=n)
            usage = self._usage(reply)
            prompt, completion = prompt + usage.prompt_tokens, completion + usage.completion_tokens
            total += len(reply["choices"])
            for choice in reply["choices"]:
                text = choice["message"].get("content") or ""
                for letter in letters:
                    if text in (letter, " " + letter):
                        counts[letter] += 1
        if total == 0:
            raise TargetError(f"{self.id} answered a sampling request with no choices")
        norm = total + 0.5 * (len(letters) + 1)
        meta = {"objective": "sampling-estimate", "samples": total,
                "smoothing": "+1/2 per letter and one 'other' bucket"}
        return Response({"logprobs": {x: math.log((c + 0.5) / norm) for x, c in counts.items()},
                         "coverage": {x: c > 0 for x, c in counts.items()},
                         "forms": {x: [] for x in letters}},
                        Usage(prompt, completion), meta=meta)

    # ---- helpers -------------------------------------------------------------------------

    @staticmethod
    def _top(alternatives: list[dict] | None) -> dict[str, float]:
        """``{token: logprob}`` best first; a token text seen twice keeps its first value."""
        top: dict[str, float] = {}
        for alt in alternatives or []:
            top.setdefault(alt["token"], float(alt["logprob"]))
        return top

    @staticmethod
    def _seed(seed: int, sample: int) -> int:
        """The seed sent for draw ``sample`` of a request seeded with ``seed``."""
        if sample == 0:
            return seed
        digest = hashlib.sha256(f"{seed}:{sample}".encode()).digest()
        return int.from_bytes(digest[:4], "big") >> 1

    @staticmethod
    def _usage(reply: dict) -> Usage:
        usage = reply.get("usage") or {}
        return Usage(int(usage.get("prompt_tokens") or 0),
                     int(usage.get("completion_tokens") or 0))

    def _scrub(self, text: str) -> str:
        """``text`` with the API key (and anything else secret-looking) removed."""
        return redact_text(" ".join(text.replace(self._key, REDACTED).split()))[0]

    async def _create(self, messages: list[dict], **options: Any) -> dict:
        """One chat completion as its JSON (with at least one choice), openai's errors mapped
        to bbzo's."""
        try:
            reply = await self._on_client_loop(self._client_create(messages, options))
        except openai.APIStatusError as err:
            retry_after = parse_retry_after(err.response.headers.get("retry-after"))
            message = self._scrub(f"{self.id} answered HTTP {err.status_code}: {err.message}")
            raise error_for_status(err.status_code, message, retry_after) from None
        except openai.APITimeoutError:
            raise TransientError(f"{self.id} did not answer within {self.timeout_s:g} s",
                                 status=None) from None
        except openai.APIConnectionError as err:
            raise TransientError(self._scrub(f"cannot reach {self.id}: {err}"),
                                 status=None) from None
        except openai.OpenAIError as err:
            raise TargetError(self._scrub(f"{self.id}: {err}")) from None
        if not (isinstance(reply, dict) and isinstance(reply.get("choices"), list)
                and reply["choices"]
                and all(isinstance(c, dict) and isinstance(c.get("message"), dict)
                        for c in reply["choices"])):
            raise TargetError(f"{self.id} sent a reply without choices; is base_url an "
                              f"OpenAI-compatible API?")
        return reply

    async def _client_create(self, messages: list[dict], options: dict) -> object:
        """The reply's parsed JSON (None if it is not JSON)."""
        if self._client is None:
            self._client = openai.AsyncOpenAI(api_key=self._key, base_url=self._base_url,
                                              timeout=self.timeout_s, max_retries=0)
        raw = await self._client.chat.completions.with_raw_response.create(
            model=self.model, messages=messages, **options)
        try:
            return json.loads(raw.text)
        except ValueError:
            return None

    async def _on_client_loop(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the client's own event loop (started on first use)."""
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=_run_loop, args=(self._loop,), name="bbzo-openai",
                                 daemon=True).start()
            loop = self._loop
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def close(self) -> None:
        """Close the HTTP client and stop its event loop (idempotent)."""
        with self._lock:
            loop, client = self._loop, self._client
            self._loop, self._client = None, None
        if loop is None:
            return
        if client is not None:
            asyncio.run_coroutine_threadsafe(client.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
