"""Checks a rewrite must pass to count: same meaning, natural wording, same answer.

Each constraint answers a batch of rewrites of one question with one ``Verdict`` list per
rewrite, using one query-layer submit (or none). Aspects:

- ``OptionLeak`` (answer): no option text appears in the rewrite unless the original had it;
  no queries.
- ``EmbeddingSimilarity`` (equivalence): cosine(original, rewrite) of unit sentence embeddings
  is at least a threshold; one ``embed`` request per text.
- ``PerplexityCoherence`` (coherence): perplexity under a reference LM is at most a ratio times
  the original's; one ``option_loglik`` request per text.
- ``LLMJudge`` (equivalence and coherence): the judge answers 1 to all five equivalence criteria
  (mutual entailment, no added information, no omitted information, same meaning, same correct
  answer) and to fluency; one ``chat`` request per rewrite.

Cosine similarity is symmetric, so the embedding check measures both directions at once (the
embedding stand-in for mutual entailment). A judge answer that cannot be parsed fails the
rewrite and is flagged ``parse_failed``: counted, never silent.

``Checks`` runs constraints in order, cheapest first, sending only the rewrites that passed
every earlier constraint to the next one (an API judge is asked only about rewrites that
already look equivalent and fluent).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np

from bbzo.attacks.seca.questions import Question
from bbzo.attacks.seca.replies import first_json_object, flag_value, loose_flag
from bbzo.blackbox.protocol import Request
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.text import TEXT_KINDS, text_kind, text_request
from bbzo.checks import fraction, int_at_least, positive
from bbzo.errors import InputError, TargetError

ASPECTS = ("equivalence", "coherence", "answer")
PERPLEXITY_PROMPT = "Question:"


@dataclass(frozen=True)
class Verdict:
    """One check of one rewrite.

    Attributes:
        name: the check (``embedding``, ``perplexity``, ``option-leak``, ``judge-equivalence``,
            ``judge-coherence``).
        aspect: ``equivalence``, ``coherence`` or ``answer``.
        passed: whether the rewrite passed.
        score: the check's number (cosine, perplexity ratio, leaked options, judge mean), or
            None when there is none (an unparsed judge answer).
        detail: one readable line.
        parse_failed: the judge's answer could not be read (the rewrite fails).
    """

    name: str
    aspect: str
    passed: bool
    score: float | None
    detail: str
    parse_failed: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class Constraint(Protocol):
    """A check of rewrites of one question."""

    name: str

    def check(self, question: Question, texts: Sequence[str]) -> list[list[Verdict]]:
        """One list of verdicts per text, in order."""
        ...


class OptionLeak:
    """Fails a rewrite that spells out an option (case-insensitive, whole words) that the
    original question did not already contain."""

    name = "option-leak"

    def check(self, question: Question, texts: Sequence[str]) -> list[list[Verdict]]:
        patterns = [re.compile(r"(?<!\w)" + re.escape(c.lower()) + r"(?!\w)")
                    for c in question.choices]
        before = question.question.lower()
        out = []
        for text in texts:
            lower = text.lower()
            leaked = [c for c, p in zip(question.choices, patterns, strict=True)
                      if p.search(lower) and not p.search(before)]
            detail = f"mentions option(s) {leaked}" if leaked else "mentions no option"
            out.append([Verdict(self.name, "answer", not leaked, float(len(leaked)), detail)])
        return out


class EmbeddingSimilarity:
    """Cosine similarity of sentence embeddings between original and rewrite.

    Args:
        layer: query layer of an embedding target (``embed:minilm-l6``).
        threshold: least cosine that passes, in (0, 1].
    """

    name = "embedding"

    def __init__(self, layer: QueryLayer, threshold: float = 0.9) -> None:
        self.layer = layer
        self.threshold = fraction("similarity threshold", threshold)

    def check(self, question: Question, texts: Sequence[str]) -> list[list[Verdict]]:
        if not texts:
            return []
        responses = self.layer.submit([Request("embed", {"texts": [t]})
                                       for t in [question.question, *texts]])
        vectors = np.array([r.output["embeddings"][0] for r in responses], dtype=float)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if not np.all(norms > 0):
            raise TargetError(f"embedding target {self.layer.target.id} returned a zero vector")
        vectors /= norms
        cosines = vectors[1:] @ vectors[0]
        return [[Verdict(self.name, "equivalence", bool(c >= self.threshold), float(c),
                         f"cosine {c:.3f} (pass at >= {self.threshold:g})")] for c in cosines]


class PerplexityCoherence:
    """Perplexity of the text under a reference LM, after the short prompt ``Question:``,
    compared with the original question's.

    Args:
        layer: query layer of a causal LM that answers ``option_loglik``.
        ratio: a rewrite passes when its perplexity is at most ``ratio`` × the original's.
    """

    name = "perplexity"

    def __init__(self, layer: QueryLayer, ratio: float = 5.0) -> None:
        if "option_loglik" not in layer.target.capabilities:
            raise InputError(f"reference LM {layer.target.id} cannot answer option_loglik "
                             f"requests, so it cannot measure perplexity; use a local hf: model")
        self.layer = layer
        self.ratio = positive("coherence ratio", ratio)

    def perplexities(self, texts: Sequence[str]) -> np.ndarray:
        """exp(-mean token log-likelihood) of each text, shape (len(texts),)."""
        responses = self.layer.submit([Request("option_loglik", {
            "prompt": PERPLEXITY_PROMPT, "options": [" " + t]}) for t in texts])
        return np.array([math.exp(-r.output["loglik"][0] / max(1, r.output["ntokens"][0]))
                         for r in responses])

    def check(self, question: Question, texts: Sequence[str]) -> list[list[Verdict]]:
        if not texts:
            return []
        ppl = self.perplexities([question.question, *texts])
        return [[Verdict(self.name, "coherence", bool(p <= self.ratio * ppl[0]),
                         float(p / ppl[0]), f"perplexity {p:.1f} vs original {ppl[0]:.1f} "
                                            f"(pass at <= {self.ratio:g}x)")] for p in ppl[1:]]


CRITERIA = {
    "mutual_entailment": "each question implies the other",
    "no_added_information": "the rewrite adds no facts, hints or conditions",
    "no_omitted_information": "the rewrite keeps every key fact of the original",
    "same_meaning": "both ask for exactly the same thing",
    "same_answer": "the correct answer to the rewrite is still {answer}",
}
FLUENCY = {"fluent": "the rewrite is clear, grammatical, natural English"}


def parse_judgement(text: str) -> dict[str, int]:
    """The 0/1 answers found in a judge's reply, by criterion name (absent when not found).

    Reads the first JSON object holding any criterion; else ``name: 0/1`` pairs anywhere.
    """
    keys = [*CRITERIA, *FLUENCY]
    obj = first_json_object(text, lambda o: any(k in o for k in keys))
    if obj is not None:
        found = {k: flag_value(obj[k]) for k in keys if k in obj}
    else:
        found = {k: loose_flag(text, k) for k in keys}
    return {k: v for k, v in found.items() if v is not None}


class LLMJudge:
    """An LLM judge (temperature 0) asked the paper's five equivalence criteria and fluency in
    one request per rewrite; gives a ``judge-equivalence`` and a ``judge-coherence`` verdict.

    Args:
        layer: the judge model's query layer (``chat``, else ``generate``).
        max_tokens: most tokens of the judge's answer.
    """

    name = "judge"

    def __init__(self, layer: QueryLayer, *, max_tokens: int = 128) -> None:
        self.kind = text_kind(layer.target, TEXT_KINDS, "judge")
        self.layer = layer
        self.max_tokens = int_at_least("judge max_tokens", max_tokens)

    def prompt(self, question: Question, text: str) -> str:
        """The judge's instruction for one rewrite (a question without options, as in
        ``attack check`` pairs, is judged without the options and the answer)."""
        if question.choices:
            answer = question.option_text(question.answer)
            kind, context = "multiple-choice question", (
                f"Options: {question.options_text()}\nCorrect answer of the original: {answer}\n")
        else:
            answer, kind, context = "the same as the original's", "question", ""
        items = "\n".join(f"- {k}: {v.format(answer=answer)}"
                          for k, v in {**CRITERIA, **FLUENCY}.items())
        example = json.dumps({k: 1 for k in [*CRITERIA, *FLUENCY]})
        return (f"Compare an original {kind} with a rewritten version.\n"
                f"Original: {question.question}\nRewritten: {text}\n{context}"
                f"Answer each item with 1 (yes) or 0 (no):\n{items}\n"
                f"Reply with JSON only, for example {example}")

    def check(self, question: Question, texts: Sequence[str]) -> list[list[Verdict]]:
        if not texts:
            return []
        params = {"temperature": 0, "max_tokens": self.max_tokens}
        requests = [text_request(self.kind, self.prompt(question, text), params)
                    for text in texts]
        return [self._verdicts(str(r.output.get("text", "")))
                for r in self.layer.submit(requests)]

    def _verdicts(self, reply: str) -> list[Verdict]:
        found = parse_judgement(reply)
        unread = f"judge reply could not be parsed: {' '.join(reply.split())[:80]!r}"
        if all(k in found for k in CRITERIA):
            failed = [k for k in CRITERIA if not found[k]]
            equivalence = Verdict("judge-equivalence", "equivalence", not failed,
                                  sum(found[k] for k in CRITERIA) / len(CRITERIA),
                                  f"failed {', '.join(failed)}" if failed else "all five met")
        else:
            equivalence = Verdict("judge-equivalence", "equivalence", False, None, unread, True)
        if "fluent" in found:
            coherence = Verdict("judge-coherence", "coherence", bool(found["fluent"]),
                                float(found["fluent"]), "fluent" if found["fluent"]
                                else "judged not fluent")
        else:
            coherence = Verdict("judge-coherence", "coherence", False, None, unread, True)
        return [equivalence, coherence]


class Checks:
    """Constraints applied in order; a rewrite reaches a constraint only if it passed all
    earlier ones, so its verdict list stops at its first failing constraint."""

    name = "checks"

    def __init__(self, constraints: Sequence[Constraint]) -> None:
        self.constraints = list(constraints)

    def check(self, question: Question, texts: Sequence[str]) -> list[list[Verdict]]:
        verdicts: list[list[Verdict]] = [[] for _ in texts]
        alive = list(range(len(texts)))
        for constraint in self.constraints:
            if not alive:
                break
            answers = constraint.check(question, [texts[i] for i in alive])
            for i, answer in zip(alive, answers, strict=True):
                verdicts[i] += answer
            alive = [i for i in alive if all(v.passed for v in verdicts[i])]
        return verdicts
