"""Who writes the candidate rewrites: an LLM asked to rephrase a question without changing it.

Each proposal is one ``chat`` (or ``generate``) request at temperature 1.0 with its own
``sample`` index, so every proposal of a search is a fresh draw and a rerun of the same search
is answered from the ledger. The instruction is drawn at random, per proposal, from templates ×
verbs × styles (our own texts, in the spirit of the paper), with a generator seeded by
(seed, question id, step): the same seed gives the same prompts.

Two prompt formats:

- ``chat`` (the paper's): an expert persona as the system message, the instruction with the
  question, its options and its correct answer, and a request for JSON ``{"new_question": ...}``.
- ``completion``: for small local models, which rarely follow a chat instruction: a one-line
  instruction (verb × style), two worked examples as JSON lines, then the parent's line left
  open at ``"new_question": "`` for the model to complete. The request stops at the end of
  that line (``stop`` = newline): the model would otherwise go on writing example lines until
  ``max_tokens``, which the parser never reads when the line closes its string.

``parse_proposal`` is tolerant, because small models break JSON: a JSON object with
``new_question``; else (completion format) the open string up to its closing quote; else the
first quoted question; else the first non-empty line. Parse outcomes are counted in
``ProposerStats``.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from bbzo.attacks.seca.questions import Question
from bbzo.attacks.seca.replies import first_json_object
from bbzo.blackbox.protocol import Request
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.text import TEXT_KINDS, text_kind, text_request
from bbzo.checks import int_at_least, non_negative, one_of

FORMATS = ("chat", "completion")
MAX_CHARS = 400  # a proposal longer than this is not a rewrite of a one-sentence question

VERBS = ("Rephrase", "Reword", "Rewrite", "Restate", "Paraphrase")
STYLES = (
    "in plain everyday words",
    "in a more formal register",
    "more concisely",
    "with a different sentence structure",
    "the way a curious student might ask it",
    "using different vocabulary",
    "as a quiz host would read it out",
)
TEMPLATES = (
    "{verb} the question below {style}. Its meaning and its correct answer ({answer}) must stay "
    "exactly the same, and none of the answer options may appear in it.\n"
    "Question: {question}\nOptions: {options}",
    "As an expert in {subject}, {verb_lower} this question {style} so that {answer} is still its "
    "only correct answer. Do not add or drop any information and do not name any option.\n"
    "Question: {question}\nOptions: {options}",
    "Here is a multiple-choice question about {subject}: {question}\nIts options are "
    "{options}, and the correct one is {answer}. {verb} the question {style}, keeping every fact "
    "it states and keeping its answer, without mentioning any option.",
)
LINE_END = "\n"  # the completion format's stop: its answer is one JSON line
JSON_REQUEST = 'Reply with JSON only: {"new_question": "<the rewritten question>"}'
EXAMPLES = (
    ("Who invented the telephone?", "Which inventor is credited with creating the telephone?"),
    ("What is the tallest mountain in the world?", "Which mountain on Earth is the highest?"),
)
_LABEL = re.compile(r"^\s*(new[_ ]question|rewritten|rephrased|question)\s*[:=-]\s*",
                    re.IGNORECASE)
_QUOTED = re.compile(r"[\"“]([^\"“”\n]{8,}?\?)[\"”]")


@dataclass
class ProposerStats:
    """Parse outcomes of the proposals so far.

    Attributes:
        proposals: answers parsed.
        json: parsed as JSON (or the completion's closed string).
        fallback: rescued by the fallbacks (quoted text, first line).
        failed: nothing usable (empty, or longer than ``MAX_CHARS``).
    """

    proposals: int = 0
    json: int = 0
    fallback: int = 0
    failed: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def parse_proposal(text: str, *, opened: bool = False) -> tuple[str | None, str]:
    """The rewritten question in a proposer's answer, and how it was found.

    Args:
        text: the model's answer.
        opened: the prompt ended inside an open JSON string (completion format).

    Returns:
        (question or None, ``"json"`` | ``"fallback"`` | ``"failed"``).
    """
    if opened:
        try:
            value, _ = json.JSONDecoder().raw_decode('"' + text)
            return _usable(value, "json")
        except json.JSONDecodeError:
            pass
    obj = first_json_object(text, lambda o: isinstance(o.get("new_question"), str))
    if obj is not None:
        return _usable(obj["new_question"], "json")
    quoted = _QUOTED.search(text)
    if quoted:
        return _usable(quoted.group(1), "fallback")
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    return _usable(_LABEL.sub("", line).strip().strip('"{}'), "fallback")


def _usable(value: str, how: str) -> tuple[str | None, str]:
    value = " ".join(value.split())
    if not value or len(value) > MAX_CHARS:
        return None, "failed"
    return value, how


class Proposer(Protocol):
    """Writes candidate rewrites."""

    def propose(self, question: Question, parents: Sequence[str], m: int,
                step: int) -> list[str | None]:
        """``m`` rewrites of each parent, parent-major (len(parents) * m); None where a
        proposal gave nothing usable."""
        ...


class LLMProposer:
    """Rewrites from an LLM through its query layer (one submit per call of ``propose``).

    Args:
        layer: the proposer model's query layer.
        seed: seed of the instruction draws (and ``params["seed"]``).
        fmt: ``chat`` or ``completion`` (module doc).
        temperature: sampling temperature (the paper's 1.0).
        max_tokens: most tokens per proposal.
    """

    def __init__(self, layer: QueryLayer, *, seed: int = 0, fmt: str = "chat",
                 temperature: float = 1.0, max_tokens: int = 64) -> None:
        self.layer = layer
        self.seed = int_at_least("seed", seed, 0)
        self.fmt = one_of("proposer format", fmt, FORMATS)
        self.temperature = non_negative("temperature", temperature)
        self.max_tokens = int_at_least("max_tokens", max_tokens)
        self.kind = text_kind(layer.target, TEXT_KINDS if fmt == "chat" else ("generate",),
                              f"proposer (format {fmt})")
        self.stats = ProposerStats()

    def propose(self, question: Question, parents: Sequence[str], m: int,
                step: int) -> list[str | None]:
        rng = random.Random(f"seca-proposer:{self.seed}:{question.id}:{step}")
        base = step * len(parents) * m
        requests = [self._request(question, parent, rng, base + i)
                    for i, parent in enumerate(p for p in parents for _ in range(m))]
        out = []
        for response in self.layer.submit(requests):
            text, how = parse_proposal(str(response.output.get("text", "")),
                                       opened=self.fmt == "completion")
            self.stats.proposals += 1
            setattr(self.stats, how, getattr(self.stats, how) + 1)
            out.append(text)
        return out

    def _request(self, question: Question, parent: str, rng: random.Random,
                 sample: int) -> Request:
        verb, style = rng.choice(VERBS), rng.choice(STYLES)
        params = {"temperature": self.temperature, "max_tokens": self.max_tokens,
                  "seed": self.seed}
        if self.fmt == "completion":
            return text_request(self.kind, completion_prompt(parent, verb, style),
                                {**params, "stop": LINE_END}, sample=sample)
        answer = question.option_text(question.answer)
        instruction = rng.choice(TEMPLATES).format(
            verb=verb, verb_lower=verb.lower(), style=style, question=parent, answer=answer,
            subject=question.subject,
            options=question.options_text())
        return text_request(self.kind, f"{instruction}\n{JSON_REQUEST}", params,
                            system=f"You are an expert in {question.subject}.", sample=sample)


def completion_prompt(parent: str, verb: str, style: str) -> str:
    """The completion-format prompt: instruction, worked examples, the parent's open line."""
    lines = [f"{verb} each question {style}. Keep its meaning and its correct answer, and never "
             f"mention the answer options."]
    lines += [json.dumps({"question": q, "new_question": r}) for q, r in EXAMPLES]
    lines.append(json.dumps({"question": parent})[:-1] + ', "new_question": "')
    return "\n".join(lines)
