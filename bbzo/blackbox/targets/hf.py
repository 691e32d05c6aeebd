"""``HFTarget``: a local causal language model through transformers (spec ``hf:<alias-or-path>``).

What it answers (``bbzo.blackbox.protocol`` has the payload/output table):

- ``letter_logprobs``: full-vocabulary log-softmax at the position after the prompt, read at each
  letter's token forms (``"A"`` and ``" A"``, those that are one token in this tokenizer);
  the forms of one letter are combined by logsumexp (the probability of either spelling). The
  output adds ``"forms"``: the spellings found, per letter.
- ``option_loglik``: sum of log-probabilities of each option's tokens after the prompt; the
  prompt and each option are tokenised separately, so an option usually starts with a space.
- ``generate`` / ``chat``: sampling at ``temperature`` with nucleus ``top_p`` for up to
  ``max_tokens`` tokens (default 64), temperature 0 = greedy. Each request draws from its own
  random generator, seeded from the request's canonical JSON (``params["seed"]`` and the
  ``sample`` index included; not the target id, so a moved model folder samples the same), so a
  (request, sample) pair gives the same text in any batch. ``params["stop"]`` (a string or a
  list of up to 4; ``bbzo.blackbox.targets.stops``) ends a row as soon as its decoded text
  contains one: the text stops before it, the finish reason is ``"stop"``. The stop strings are
  left out of the seed, so a request draws the same tokens with or without them. With
  ``params["logprobs"]`` the output lists each token's log-probability and its
  ``top_logprobs`` (at most 20) best alternatives, OpenAI style; these are the model's raw
  log-probabilities (before temperature and top_p), for every token drawn (the one that
  completed a stop string included). One completion per request: repeated draws
  are requests with another ``sample`` index. ``params["prompt_logprobs"]`` (with logprobs) adds
  ``"prompt_logprobs"``: each prompt token's log-probability given the tokens before it (None
  for the first) and its best alternatives; then ``max_tokens`` may be 0 (score only).

Prompts: ``payload["prompt"]`` (raw text, the tokenizer's special tokens such as BOS added; or
a list of token ids, used as they are) or
``payload["messages"]`` (rendered with the chat template). ``params["chat_template"]`` overrides
the default (on for messages, off for a prompt); messages without the template are their
contents joined by blank lines.

Batching: scoring pads on the right (causal attention keeps real tokens unaffected);
generation pads on the left with position ids counted from the attention mask. Batched results
equal one-at-a-time results up to float rounding.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from bbzo.blackbox.protocol import Request, Response, Usage
from bbzo.blackbox.targets import models
from bbzo.blackbox.targets.base import Target
from bbzo.blackbox.targets.stops import StopWatch, cut, parse_stop
from bbzo.errors import InputError, TargetError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_MAX_TOKENS = 64
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class Sampling:
    """Decoding settings of one request.

    Attributes:
        temperature: softmax temperature; 0 = greedy.
        top_p: nucleus mass in (0, 1].
        max_tokens: most tokens to generate (the stop token included); 0 only with
            ``prompt_logprobs`` (score the prompt, generate nothing).
        top_logprobs: None = no logprobs; k = logprobs with the k best alternatives per token.
        seed: seed of this request's random generator.
        stop: stop strings; a row ends once its text contains one.
        prompt_logprobs: also report the prompt tokens' log-probabilities (needs logprobs).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = DEFAULT_MAX_TOKENS
    top_logprobs: int | None = None
    seed: int = 0
    stop: tuple[str, ...] = ()
    prompt_logprobs: bool = False

    @classmethod
    def from_params(cls, params: dict, seed: int) -> Sampling:
        """Validated settings from a request's ``params``."""
        temperature = params.get("temperature", 1.0)
        top_p = params.get("top_p", 1.0)
        max_tokens = params.get("max_tokens", DEFAULT_MAX_TOKENS)
        k = params.get("top_logprobs", 0)
        if not isinstance(temperature, int | float) or temperature < 0:
            raise InputError(f"temperature must be a number >= 0, got {temperature!r}")
        if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {top_p!r}")
        echo = params.get("prompt_logprobs", False)
        if not isinstance(echo, bool) or (echo and not params.get("logprobs")):
            raise InputError("prompt_logprobs must be true or false, and true needs "
                             "logprobs=true in params")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) \
                or max_tokens < (0 if echo else 1):
            raise InputError(f"max_tokens must be a positive integer (0 allowed with "
                             f"prompt_logprobs), got {max_tokens!r}")
        if not isinstance(k, int) or not 0 <= k <= MAX_TOP_LOGPROBS:
            raise InputError(f"top_logprobs must be an integer in 0..{MAX_TOP_LOGPROBS}, got {k!r}")
        if k and not params.get("logprobs"):
            raise InputError("top_logprobs needs logprobs=true in params")
        if params.get("n", 1) != 1:
            raise InputError("n must be 1: ask for repeated draws with new sample indices")
        return cls(float(temperature), float(top_p), max_tokens,
                   k if params.get("logprobs") else None, seed, parse_stop(params.get("stop")),
                   echo)


@dataclass
class Completion:
    """One generated continuation.

    Attributes:
        token_ids: generated tokens, the stop token excluded.
        logprobs: raw log-probability of each of ``token_ids``.
        top: per token, the best alternatives as (token id, log-probability), best first.
        finish_reason: ``"stop"`` (a stop token was drawn, or the text reached a stop string),
            ``"length"`` (max_tokens reached) or ``"interrupted"`` (its ``interrupt`` check
            said stop; see ``HFTarget.call``).
        ntokens: tokens drawn, the stop token included.
    """

    token_ids: list[int]
    logprobs: list[float]
    top: list[list[tuple[int, float]]]
    finish_reason: str = "length"
    ntokens: int = 0


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids (B, L) that skip left padding: 0 at each row's first real token."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _pad(rows: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask (B, max length) of ``rows``, padded on the left or right."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        where = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, where] = torch.tensor(row)
        mask[i, where] = 1
    return ids, mask


def _draw(logp: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """One token id from log-probabilities ``logp`` (V,) under ``sampling``."""
    if sampling.temperature == 0:
        return int(logp.argmax())
    probs = (logp.double() / sampling.temperature).softmax(-1)
    sorted_p, order = probs.sort(descending=True)
    keep = (sorted_p.cumsum(-1) - sorted_p) < sampling.top_p  # always keeps the best token
    cdf = sorted_p[keep].cumsum(-1)
    u = torch.rand((), generator=generator, dtype=torch.float64) * cdf[-1]
    return int(order[keep][min(int(torch.searchsorted(cdf, u)), len(cdf) - 1)])


_UNSEEDED = ("stop", "prompt_logprobs")  # params that do not change the tokens drawn


def _seed(request: Request) -> int:
    """Seed of a generation request's random generator: from its canonical JSON, the stop
    strings and the prompt-scoring flag left out."""
    if any(k in request.params for k in _UNSEEDED):
        params = {k: v for k, v in request.params.items() if k not in _UNSEEDED}
        request = Request(request.kind, request.payload, params, request.sample)
    return int(request.key("")[:16], 16)


class HFTarget(Target):
    """A local causal LM. ``id`` is ``hf:<alias or resolved path>:<dtype>``.

    Args:
        model: registry alias (``bbzo.blackbox.targets.models``) or a folder written by
            ``save_pretrained``.
        device: torch device; default CUDA when present, else CPU.
        dtype: ``float32``, ``bfloat16`` or ``float16``.
        max_batch: requests (and padded rows) per forward pass.
    """

    capabilities = frozenset({"letter_logprobs", "option_loglik", "generate", "chat"})

    def __init__(self, model: str = models.DEFAULT_LM, *, device: str | None = None,
                 dtype: str = "float32", max_batch: int = 8) -> None:
        if dtype not in DTYPES:
            raise InputError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise InputError(f"max_batch must be a positive integer, got {max_batch!r}")
        path, name = models.resolve(model, models.CAUSAL_LM)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        hf_logging.disable_progress_bar()  # bbzo draws its own progress on stderr
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(
                path, dtype=DTYPES[dtype], local_files_only=True).to(self.device).eval()
        except (OSError, ValueError) as err:
            raise TargetError(f"could not load a causal LM from {path}: {err}") from err
        self.id = f"hf:{name}:{dtype}"
        self.max_batch = max_batch
        tok = self.tokenizer
        self.pad_id = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)
        stops = self.model.generation_config.eos_token_id
        stops = stops if isinstance(stops, list) else [stops]
        self.stop_ids = {i for i in [*stops, tok.eos_token_id] if i is not None}
        self.max_length = getattr(self.model.config, "max_position_embeddings", None)
        # Prefill needs the last position's logits only; most models can skip the others.
        takes = inspect.signature(self.model.forward).parameters
        self._last_only = {"logits_to_keep": 1} if "logits_to_keep" in takes else {}
        # transformers 5 renamed the KV cache argument and output ``past_key_values`` ->
        # ``cache`` (the old name still works but prints a FutureWarning on every run).
        self._cache = "cache" if "cache" in takes else "past_key_values"
        self._forms: dict[str, dict[str, int]] = {}

    # ---- prompts -------------------------------------------------------------------------

    def render(self, payload: dict, params: dict) -> list[int]:
        """Token ids of a request's prompt (``prompt`` or ``messages``; see the module doc)."""
        messages, prompt = payload.get("messages"), payload.get("prompt")
        if (messages is None) == (prompt is None):
            raise InputError("payload needs exactly one of 'prompt' (text) or 'messages' (list)")
        if messages is not None and not (
                isinstance(messages, list) and messages
                and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                        and isinstance(m.get("role"), str) for m in messages)):
            raise InputError("messages must be a non-empty list of {role, content} strings")
        if isinstance(prompt, list):
            vocab = len(self.tokenizer)
            if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab
                       for t in prompt):
                raise InputError(f"a prompt given as token ids must hold integers in "
                                 f"0..{vocab - 1}")
            return list(prompt)
        if prompt is not None and not isinstance(prompt, str):
            raise InputError(f"prompt must be a string or a list of token ids, got "
                             f"{type(prompt).__name__}")
        if not params.get("chat_template", messages is not None):
            text = prompt if prompt is not None else "\n\n".join(m["content"] for m in messages)
            return self.tokenizer.encode(text)
        if not self.tokenizer.chat_template:
            raise InputError(f"{self.id} has no chat template; set params chat_template=false")
        text = self.tokenizer.apply_chat_template(
            messages or [{"role": "user", "content": prompt}], tokenize=False,
            add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _prompt(self, request: Request, extra: int = 0) -> list[int]:
        """``render`` for a request, checked non-empty and, with ``extra`` tokens to come,
        within the model's positions."""
        ids = self.render(request.payload, request.params)
        if not ids:
            raise InputError("the prompt is empty after tokenisation; give some text")
        self._check_length(len(ids) + extra)
        return ids

    def _check_length(self, ntokens: int) -> None:
        if self.max_length is not None and ntokens > self.max_length:
            raise InputError(f"{ntokens} tokens exceed the model's {self.max_length} positions; "
                             f"shorten the prompt or lower max_tokens")

    def letter_forms(self, letter: str) -> dict[str, int]:
        """Spellings of ``letter`` that are one token (``letter``, ``" " + letter``) → token id."""
        if letter not in self._forms:
            forms = {}
            for form in (letter, " " + letter):
                ids = self.tokenizer.encode(form, add_special_tokens=False)
                if len(ids) == 1 and ids[0] not in forms.values():
                    forms[form] = ids[0]
            self._forms[letter] = forms
        return self._forms[letter]

    # ---- the model as a function of embeddings (hooks for embedding-space methods) ---------

    def input_embeddings(self) -> torch.nn.Embedding:
        """The token-embedding layer (vocabulary size, hidden size)."""
        return self.model.get_input_embeddings()

    @torch.no_grad()
    def forward_embeds(self, embeds: torch.Tensor,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, L, V), float32, for input embeddings ``embeds`` (B, L, hidden).

        ``attention_mask`` (B, L) marks real positions (1) and padding (0), left or right.
        """
        mask = (torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
                if attention_mask is None else attention_mask)
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=_positions(mask))
        return out.logits.float()

    @torch.no_grad()
    def generate_from_embeds(self, embeds: torch.Tensor, attention_mask: torch.Tensor,
                             settings: list[Sampling],
                             interrupt: Sequence[Callable[[], bool] | None] | None = None
                             ) -> list[Completion]:
        """Continue each row of left-padded input embeddings (B, L, hidden); one setting per row.

        Generated tokens enter through the ordinary embedding layer, so a hook on
        ``input_embeddings()`` only ever sees them, never ``embeds``. A row that finishes (stop
        token, stop string, ``max_tokens``, or its ``interrupt[i]()`` returning True, checked
        after every token: finish reason ``"interrupted"``) leaves the batch, so later steps cost
        less.
        """
        checks = list(interrupt) if interrupt is not None else [None] * len(settings)
        gens = [torch.Generator().manual_seed(s.seed) for s in settings]
        done = [Completion([], [], []) for _ in settings]
        watches = [StopWatch(s.stop, self._text) if s.stop else None for s in settings]
        live = list(range(len(settings)))  # the request of each batch row
        mask = attention_mask
        pos = _positions(mask)
        out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                         use_cache=True, **self._last_only)
        pos = pos[:, -1:]
        while True:
            logp = out.logits[:, -1].float().log_softmax(-1).cpu()
            keep, chosen = [], []
            for row, i in enumerate(live):
                token = _draw(logp[row], settings[i], gens[i])
                self._record(done[i], token, logp[row], settings[i])
                if done[i].finish_reason != "stop" and watches[i] is not None \
                        and watches[i].push(token):
                    done[i].finish_reason = "stop"
                if done[i].finish_reason == "length" and checks[i] is not None and checks[i]():
                    done[i].finish_reason = "interrupted"
                if done[i].finish_reason == "length" and done[i].ntokens < settings[i].max_tokens:
                    keep.append(row)
                    chosen.append(token)
            if not keep:
                return done
            cache = getattr(out, self._cache)
            if len(keep) < len(live):  # finished rows leave the batch and its cache
                index = torch.tensor(keep, device=mask.device)
                cache.batch_select_indices(index)
                mask, pos = mask[index], pos[index]
                live = [live[row] for row in keep]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            pos = pos + 1
            out = self.model(input_ids=torch.tensor(chosen, device=mask.device)[:, None],
                             attention_mask=mask, position_ids=pos, use_cache=True,
                             **{self._cache: cache})

    def _record(self, done: Completion, token: int, logp: torch.Tensor,
                sampling: Sampling) -> None:
        done.ntokens += 1
        if token in self.stop_ids:
            done.finish_reason = "stop"
            return
        done.token_ids.append(token)
        if sampling.top_logprobs is not None:
            done.logprobs.append(float(logp[token]))
            best = logp.topk(sampling.top_logprobs)
            done.top.append(list(zip(best.indices.tolist(), best.values.tolist(), strict=True)))

    # ---- request kinds -------------------------------------------------------------------

    def _scored_rows(self, rows: list[list[int]], starts: list[int]) -> list[torch.Tensor]:
        """Per row, log-softmax (n_i, V) float32 at positions ``starts[i]``..end-1 (right-padded
        batches of ``max_batch`` rows); position t predicts token t + 1."""
        result = []
        for lo in range(0, len(rows), self.max_batch):
            chunk = rows[lo:lo + self.max_batch]
            ids, mask = _pad(chunk, self.pad_id, left=False)
            with torch.no_grad():
                logits = self.model(input_ids=ids.to(self.device),
                                    attention_mask=mask.to(self.device)).logits
            for i, row in enumerate(chunk):
                span = logits[i, starts[lo + i]:len(row)]
                result.append(span.float().log_softmax(-1).cpu())
        return result

    def _letters(self, requests: list[Request]) -> list[Response]:
        rows, forms = [], []
        for r in requests:
            letters = r.payload.get("letters")
            if not (isinstance(letters, list) and letters and len(set(letters)) == len(letters)
                    and all(isinstance(x, str) and x for x in letters)):
                raise InputError("letters must be a non-empty list of distinct non-empty strings")
            found = {x: self.letter_forms(x) for x in letters}
            for x, f in found.items():
                if not f:
                    raise InputError(f"letter {x!r} is not a single token for {self.id}; "
                                     f"score it with an option_loglik request")
            rows.append(self._prompt(r))
            forms.append(found)
        scored = self._scored_rows(rows, [len(ids) - 1 for ids in rows])
        responses = []
        for logp, found, ids in zip(scored, forms, rows, strict=True):
            lp = {x: float(logp[0, list(f.values())].logsumexp(-1)) for x, f in found.items()}
            output = {"logprobs": lp, "coverage": {x: True for x in found},
                      "forms": {x: list(f) for x, f in found.items()}}
            responses.append(Response(output, Usage(prompt_tokens=len(ids)),
                                      meta={"letter_combine": "logsumexp over token forms"}))
        return responses

    def _options(self, requests: list[Request]) -> list[Response]:
        rows, starts, owners = [], [], []
        for j, r in enumerate(requests):
            options = r.payload.get("options")
            if not (isinstance(options, list) and options
                    and all(isinstance(o, str) and o for o in options)):
                raise InputError("options must be a non-empty list of non-empty strings")
            prompt = self._prompt(r)
            for option in options:
                ids = prompt + self.tokenizer.encode(option, add_special_tokens=False)
                self._check_length(len(ids))
                rows.append(ids)
                starts.append(len(prompt) - 1)
                owners.append(j)
        scored = self._scored_rows(rows, starts)
        loglik: list[list[float]] = [[] for _ in requests]
        ntokens: list[list[int]] = [[] for _ in requests]
        used = [0] * len(requests)
        for logp, ids, start, j in zip(scored, rows, starts, owners, strict=True):
            targets = torch.tensor(ids[start + 1:])
            loglik[j].append(float(logp[torch.arange(len(targets)), targets].sum()))
            ntokens[j].append(len(targets))
            used[j] += len(ids)
        return [Response({"loglik": loglik[j], "ntokens": ntokens[j]},
                         Usage(prompt_tokens=used[j])) for j in range(len(requests))]

    def _complete(self, requests: list[Request],
                  interrupt: Sequence[Callable[[], bool] | None]) -> list[Response]:
        prompts, settings = [], []
        for r in requests:
            if r.kind == "chat" and "messages" not in r.payload:
                raise InputError("chat requests need payload['messages']")
            sampling = Sampling.from_params(r.params, _seed(r))
            prompts.append(self._prompt(r, extra=max(sampling.max_tokens - 1, 0)))
            settings.append(sampling)
        done = {i: Completion([], [], []) for i, s in enumerate(settings) if s.max_tokens == 0}
        rows = [i for i in range(len(settings)) if i not in done]
        for lo in range(0, len(rows), self.max_batch):
            chunk = rows[lo:lo + self.max_batch]
            ids, mask = _pad([prompts[i] for i in chunk], self.pad_id, left=True)
            with torch.no_grad():
                embeds = self.input_embeddings()(ids.to(self.device))
            done.update(zip(chunk, self.generate_from_embeds(
                embeds, mask.to(self.device), [settings[i] for i in chunk],
                [interrupt[i] for i in chunk]), strict=True))
        echoed = [i for i, s in enumerate(settings) if s.prompt_logprobs]
        scored = dict(zip(echoed, self._scored_rows([prompts[i] for i in echoed],
                                                    [0] * len(echoed)), strict=True))
        responses = []
        for i, (sampling, prompt) in enumerate(zip(settings, prompts, strict=True)):
            output = self._completion_output(done[i], sampling)
            if i in scored:
                output["prompt_logprobs"] = self._prompt_logprobs(prompt, scored[i], sampling)
            responses.append(Response(output, Usage(len(prompt), done[i].ntokens)))
        return responses

    def _prompt_logprobs(self, ids: list[int], logp: torch.Tensor,
                         sampling: Sampling) -> list[dict]:
        """Per prompt token ``{"token", "logprob", "top"}`` from the prompt's log-softmax rows
        ``logp`` (len(ids), V); the first token has no context: logprob None, top empty."""
        decode = self.tokenizer.decode
        out = [{"token": decode([ids[0]]), "logprob": None, "top": {}}]
        k = sampling.top_logprobs or 0
        for t in range(1, len(ids)):
            best = logp[t - 1].topk(k) if k else None
            top: dict[str, float] = {}
            if best is not None:
                for j, v in zip(best.indices.tolist(), best.values.tolist(), strict=True):
                    top.setdefault(decode([j]), v)
            out.append({"token": decode([ids[t]]), "logprob": float(logp[t - 1, ids[t]]),
                        "top": top})
        return out

    def _text(self, token_ids: list[int]) -> str:
        """The text of generated tokens (special tokens left out)."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _completion_output(self, done: Completion, sampling: Sampling) -> dict:
        """``{"text", "finish_reason", "logprobs"?}``, the text cut before its first stop
        string; alternatives whose texts coincide (e.g. partial UTF-8 bytes) keep the best
        one."""
        decode = self.tokenizer.decode
        text, finish = self._text(done.token_ids), done.finish_reason
        stopped = cut(text, sampling.stop) if sampling.stop else None
        if stopped is not None:
            text, finish = stopped, "stop"
        output: dict = {"text": text, "finish_reason": finish}
        if sampling.top_logprobs is not None:
            output["logprobs"] = []
            for token, lp, top in zip(done.token_ids, done.logprobs, done.top, strict=True):
                alternatives: dict[str, float] = {}
                for i, v in top:
                    alternatives.setdefault(decode([i]), v)
                output["logprobs"].append({"token": decode([token]), "logprob": lp,
                                           "top": alternatives})
        return output

    def call(self, requests: list[Request],
             interrupt: Sequence[Callable[[], bool] | None] | None = None) -> list[Response]:
        """Answer a batch; requests of each kind share padded forward passes.

        ``interrupt`` (one entry per request, or None): a generation request whose check
        returns True stops between two tokens with finish reason ``"interrupted"`` (a server
        uses it for requests whose client left or whose deadline passed).
        """
        for r in requests:
            self.check(r)
        checks = list(interrupt) if interrupt is not None else [None] * len(requests)
        if len(checks) != len(requests):
            raise InputError(f"interrupt has {len(checks)} entries for {len(requests)} "
                             f"requests; give one per request")
        complete = self._complete
        handlers = {"letter_logprobs": self._letters, "option_loglik": self._options,
                    "generate": complete, "chat": complete}
        groups: dict = {}
        for i, r in enumerate(requests):
            groups.setdefault(handlers[r.kind], []).append(i)
        responses: list[Response | None] = [None] * len(requests)
        for handler, where in groups.items():
            start = time.perf_counter()
            batch = [requests[i] for i in where]
            answers = (complete(batch, [checks[i] for i in where]) if handler == complete
                       else handler(batch))
            elapsed = time.perf_counter() - start
            for i, answer in zip(where, answers, strict=True):
                answer.latency_s = elapsed
                responses[i] = answer
        return responses  # type: ignore[return-value]

    def close(self) -> None:
        """Drop the model so its memory can be reclaimed."""
        self.model = None  # type: ignore[assignment]
