"""What SECA maximises: the target model's log-probability of the chosen wrong option.

Every objective turns a batch of question texts (rewrites of one question, same options) into a
matrix of log-probabilities over the options, shape (texts, options), with ONE query-layer
submit. Three ways to read them off a model you can only query:

- ``letter``: a ``letter_logprobs`` request on the paper's prompt (expert persona, "Answer the
  following question and give me the reason.", the question, options ``A. ...``, then
  ``The correct answer is option: ``; no chat template); value log(p(letter) + 1e-10), p over
  the full vocabulary.
- ``option``: an ``option_loglik`` request scoring each option after
  ``Question: ...\\nAnswer:``; value the log-softmax over the options' summed log-likelihoods.
- ``sampling``: ``n`` one-letter draws at temperature 1 on the letter prompt (``generate``, else
  ``chat``); value the log of add-one smoothed letter counts, an estimate (``estimate`` True).

``letter`` is the paper's objective; ``option`` suits small local models, which are at chance
when asked for a letter; ``sampling`` serves APIs that return no log-probabilities. Each result
records which objective produced it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from bbzo.attacks.seca.questions import Question
from bbzo.attacks.seca.replies import parse_letter
from bbzo.blackbox.protocol import Request, Response
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.text import text_kind, text_request
from bbzo.checks import int_at_least
from bbzo.errors import InputError, TargetError

EPS = 1e-10
OPTION_PROMPT = "Question: {question}\nAnswer:"


def letter_prompt(question: Question, text: str) -> str:
    """The paper's answer prompt for question ``text`` with ``question``'s options."""
    options = question.options_text("\n") + "\n"
    return (f"You are an expert in {question.subject}. Answer the following question and give "
            f"me the reason.\n{text}\n{options}The correct answer is option: ")


class Objective(Protocol):
    """Scores rewrites of one question.

    Attributes:
        name: ``letter``, ``option`` or ``sampling`` (recorded with every result).
        estimate: True when the values are a sampling estimate, not the model's probabilities.
    """

    name: str
    estimate: bool

    def evaluate(self, question: Question, texts: Sequence[str]) -> np.ndarray:
        """Log-probabilities (len(texts), len(question.choices)) of each option."""
        ...


class _Submitting:
    """Shared shape: build requests per text, one submit, read each text's answers."""

    per_text = 1

    def __init__(self, layer: QueryLayer) -> None:
        self.layer = layer

    def evaluate(self, question: Question, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(question.choices)))
        requests = [r for text in texts for r in self.requests(question, text)]
        responses = self.layer.submit(requests)
        k = self.per_text
        return np.array([self.read(question, responses[i * k:(i + 1) * k])
                         for i in range(len(texts))], dtype=float)

    def requests(self, question: Question, text: str) -> list[Request]:
        raise NotImplementedError

    def read(self, question: Question, responses: list[Response]) -> list[float]:
        raise NotImplementedError


class LetterObjective(_Submitting):
    """The paper's objective: the answer letter's log-probability after ``letter_prompt``.

    A letter the target did not report counts as probability 0, i.e. log(1e-10) (an API target
    reports a floor value instead). When the target answered with its own sampling estimate
    (``meta["objective"] == "sampling-estimate"``, an API without logprobs) ``estimate`` turns
    True and stays so."""

    name = "letter"

    def __init__(self, layer: QueryLayer) -> None:
        super().__init__(layer)
        self.estimate = False

    def requests(self, question: Question, text: str) -> list[Request]:
        return [Request("letter_logprobs", {"prompt": letter_prompt(question, text),
                                            "letters": list(question.letters)})]

    def read(self, question: Question, responses: list[Response]) -> list[float]:
        self.estimate |= responses[0].meta.get("objective") == "sampling-estimate"
        logprobs = responses[0].output.get("logprobs") or {}
        out = []
        for letter in question.letters:
            value = logprobs.get(letter)
            p = 0.0 if value is None else math.exp(float(value))
            out.append(math.log(p + EPS))
        return out


class OptionObjective(_Submitting):
    """Log-softmax over the options' summed log-likelihoods after ``Question: ...\\nAnswer:``."""

    name = "option"
    estimate = False

    def requests(self, question: Question, text: str) -> list[Request]:
        return [Request("option_loglik", {"prompt": OPTION_PROMPT.format(question=text),
                                          "options": [" " + c for c in question.choices]})]

    def read(self, question: Question, responses: list[Response]) -> list[float]:
        loglik = np.asarray(responses[0].output["loglik"], dtype=float)
        if loglik.shape != (len(question.choices),) or not np.isfinite(loglik).all():
            raise TargetError(f"target answered option_loglik with {loglik.tolist()!r}; "
                              f"expected {len(question.choices)} finite numbers")
        shifted = loglik - loglik.max()
        return (shifted - math.log(np.exp(shifted).sum())).tolist()


class SamplingObjective(_Submitting):
    """An estimate for targets without log-probabilities: ``samples`` draws of a short answer
    at temperature 1 (request ``sample`` indices 0..samples-1), each read as its choice by
    ``parse_letter`` (the rule ASR@K uses); p(option) = (count + 1) / (parsed draws + options).

    Args:
        layer: the target's query layer.
        samples: draws per text.
        seed: passed in ``params["seed"]`` so that another run seed gives other draws.
        max_tokens: tokens per draw (a few, so "Option B" still parses).
    """

    name = "sampling"
    estimate = True

    def __init__(self, layer: QueryLayer, *, samples: int = 10, seed: int = 0,
                 max_tokens: int = 4) -> None:
        super().__init__(layer)
        self.per_text = int_at_least("samples", samples)
        self.seed = int_at_least("seed", seed, 0)
        self.max_tokens = int_at_least("max_tokens", max_tokens)
        self.kind = text_kind(layer.target, ("generate", "chat"), "target (sampling objective)")

    def requests(self, question: Question, text: str) -> list[Request]:
        prompt = letter_prompt(question, text)
        params = {"temperature": 1.0, "max_tokens": self.max_tokens, "seed": self.seed}
        return [text_request(self.kind, prompt, params, sample=i) for i in range(self.per_text)]

    def read(self, question: Question, responses: list[Response]) -> list[float]:
        counts = np.zeros(len(question.choices))
        for response in responses:
            letter = parse_letter(str(response.output.get("text", "")), question.letters)
            if letter is not None:
                counts[question.letters.index(letter)] += 1
        return np.log((counts + 1.0) / (counts.sum() + len(counts))).tolist()


OBJECTIVES = ("letter", "option", "sampling")


def make_objective(name: str, layer: QueryLayer, *, samples: int = 10,
                   seed: int = 0) -> Objective:
    """The objective called ``name`` on ``layer``; ``auto`` picks ``option`` when the target
    scores options, else ``letter`` when it reports letter log-probabilities, else
    ``sampling``."""
    caps = layer.target.capabilities
    if name == "auto":
        name = ("option" if "option_loglik" in caps else
                "letter" if "letter_logprobs" in caps else "sampling")
    if name == "sampling":
        return SamplingObjective(layer, samples=samples, seed=seed)
    kinds = {"letter": "letter_logprobs", "option": "option_loglik"}
    if name not in kinds:
        raise InputError(f"objective must be one of auto, {', '.join(OBJECTIVES)}, got {name!r}")
    if kinds[name] not in caps:
        raise InputError(f"target {layer.target.id} cannot answer {kinds[name]} requests, so "
                         f"the {name} objective cannot run on it; use --objective sampling")
    return LetterObjective(layer) if name == "letter" else OptionObjective(layer)
