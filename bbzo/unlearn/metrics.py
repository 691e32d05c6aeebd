"""TOFU metrics for question–answer sets (Maini et al. 2024, "TOFU: A Task of Fictitious
Unlearning for LLMs"), every model call through the query layer.

**What our data provides.** A question (``bbzo.attacks.seca.questions.Question``) has one right
option and wrong ones: TOFU records give ``answer`` and ``perturbed_answer``, MMLU-like records
``choices``. TOFU's truth ratio compares perturbed (wrong) answers with a *paraphrase* of the
right answer; no file here carries paraphrases, so the right option itself stands in for the
paraphrase and the wrong options for the perturbed answers.

**Per question**, from one ``option_loglik`` request (``Question: ...\\nAnswer:`` then each
option; the very request ``bbzo.unlearn.evaluate`` scores accuracy with, so a shared ledger
answers it once) and one greedy ``generate`` request on the same prompt:

- length-normalised probability of option o: P̄(o) = P(o | q)^(1/|o|) = exp(loglik / ntokens);
- ``probability``: P̄(right) / Σ_options P̄(o) (TOFU's form for its real-authors and world-facts
  sets, used here for every set since all of ours are multiple choice);
- ``truth_ratio`` R: the geometric mean of P̄ over the wrong options divided by P̄(right) (TOFU's
  code: exp(mean wrong log P̄ − right log P̄)); below 1 the model prefers the truth;
- ``rouge_l``: ROUGE-L recall of the greedy generation against the right answer.

**Per set** (TOFU's aggregation): the truth-ratio statistic is mean(min(R, 1/R)) on the forget
set and mean(max(0, 1 − R)) elsewhere; **forget quality** is the two-sample Kolmogorov–Smirnov
p-value between the R of the evaluated model and the R of a retain reference model (never
trained on the forget set) on the forget set; **model utility** is the harmonic mean of
probability, ROUGE-L and truth-ratio statistic over the utility sets (TOFU: retain, real
authors, world facts; callers name the subset they use).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import ks_2samp

from bbzo.attacks.seca.objective import OPTION_PROMPT
from bbzo.attacks.seca.questions import Question
from bbzo.blackbox.protocol import Request, Response
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.errors import InputError, TargetError
from bbzo.unlearn.evaluate import option_logliks, question_requests

MAX_TOKENS = 64
METRICS = ("probability", "rouge_l", "truth_ratio")
_NOT_WORD = re.compile(r"[^a-z0-9]+")


def truth_ratio(loglik: ArrayLike, ntokens: ArrayLike, answer: int) -> float:
    """TOFU truth ratio of one question: geometric mean of the wrong options' length-normalised
    probabilities over the right option's.

    Args:
        loglik: (k,) summed log-probability of each option's tokens.
        ntokens: (k,) each option's token count.
        answer: index of the right option.
    """
    mean = _per_token(loglik, ntokens, answer)
    wrong = np.delete(mean, answer)
    return float(np.exp(wrong.mean() - mean[answer]))


def answer_probability(loglik: ArrayLike, ntokens: ArrayLike, answer: int) -> float:
    """The right option's share of the length-normalised probabilities of all options."""
    mean = _per_token(loglik, ntokens, answer)
    w = np.exp(mean - mean.max())
    return float(w[answer] / w.sum())


def _per_token(loglik: ArrayLike, ntokens: ArrayLike, answer: int) -> np.ndarray:
    ll, n = np.asarray(loglik, dtype=float), np.asarray(ntokens, dtype=float)
    if ll.ndim != 1 or ll.shape != n.shape or len(ll) < 2:
        raise InputError(f"loglik and ntokens must be two lists of the same length >= 2, got "
                         f"shapes {ll.shape} and {n.shape}")
    if not (np.isfinite(ll).all() and (n >= 1).all()):
        raise InputError("loglik must be finite and every ntokens >= 1")
    if not 0 <= answer < len(ll):
        raise InputError(f"answer must index one of the {len(ll)} options, got {answer}")
    return ll / n


def rouge_tokens(text: str) -> list[str]:
    """Lower-cased runs of ``[a-z0-9]`` (rouge-score's tokenisation, without its stemmer)."""
    return [t for t in _NOT_WORD.split(text.lower()) if t]


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall: length of the longest common token subsequence of ``prediction`` and
    ``reference`` over the reference's token count (0 when either has no tokens).

    TOFU scores with rouge-score's Porter stemmer; this does not stem, so inflections
    ("writes" / "write") do not match and scores can be a little lower than TOFU's.
    """
    ref, pred = rouge_tokens(reference), rouge_tokens(prediction)
    if not ref or not pred:
        return 0.0
    row = [0] * (len(pred) + 1)  # LCS lengths of ref[:i] against pred[:j], one row kept
    for r in ref:
        diagonal = 0
        for j, p in enumerate(pred, 1):
            above = row[j]
            row[j] = diagonal + 1 if r == p else max(above, row[j - 1])
            diagonal = above
    return row[-1] / len(ref)


def truth_ratio_statistic(ratios: ArrayLike, forget: bool) -> float:
    """TOFU's set statistic: mean(min(R, 1/R)) on a forget set (1 = no preference for the
    truth), mean(max(0, 1 − R)) on other sets (1 = always prefers the truth)."""
    r = np.asarray(ratios, dtype=float)
    if r.size == 0 or not (r > 0).all():
        raise InputError("truth ratios must be a non-empty list of positive numbers")
    return float(np.minimum(r, 1 / r).mean() if forget else np.maximum(0.0, 1 - r).mean())


def forget_quality(ratios: ArrayLike, reference: ArrayLike) -> float:
    """Kolmogorov–Smirnov two-sample p-value between the evaluated model's truth ratios on the
    forget set and the retain reference model's (high: indistinguishable from never trained)."""
    a, b = np.asarray(ratios, dtype=float), np.asarray(reference, dtype=float)
    if a.ndim != 1 or b.ndim != 1 or not a.size or not b.size:
        raise InputError("forget quality needs two non-empty lists of truth ratios")
    return float(ks_2samp(a, b).pvalue)


def model_utility(values: Sequence[float]) -> float:
    """Harmonic mean of the utility figures (each in [0, 1]); 0 when any is 0."""
    v = np.asarray(values, dtype=float)
    if v.size == 0 or (v < 0).any() or not np.isfinite(v).all():
        raise InputError("model utility needs a non-empty list of figures >= 0")
    return 0.0 if (v == 0).any() else float(len(v) / (1 / v).sum())


@dataclass
class QAMetrics:
    """Per-question TOFU figures of one pass over a question set.

    Attributes:
        truth_ratio: (n,) truth ratio R.
        probability: (n,) normalised probability of the right option.
        correct: (n,) bool, the right option has the highest summed log-likelihood (the
            accuracy of ``bbzo.unlearn.evaluate``).
        rouge_l: (n,) ROUGE-L recall of the greedy generation (empty when not generated).
        generations: the generated texts (empty when not generated).
    """

    truth_ratio: np.ndarray
    probability: np.ndarray
    correct: np.ndarray
    rouge_l: np.ndarray
    generations: list[str]

    def summary(self, forget: bool) -> dict[str, float]:
        """Set means: ``probability``, ``rouge_l`` (when generated), ``truth_ratio`` (TOFU's
        statistic, ``truth_ratio_statistic``) and ``accuracy``."""
        out = {"probability": float(self.probability.mean()),
               "truth_ratio": truth_ratio_statistic(self.truth_ratio, forget),
               "accuracy": float(self.correct.mean())}
        if self.rouge_l.size:
            out["rouge_l"] = float(self.rouge_l.mean())
        return out


def generation_requests(questions: Sequence[Question], params: dict | None = None,
                        max_tokens: int = MAX_TOKENS) -> list[Request]:
    """One greedy ``generate`` request per question on its option-scoring prompt, stopping at
    the end of the line (``params`` added to each)."""
    return [Request("generate", {"prompt": OPTION_PROMPT.format(question=q.question)},
                    {"max_tokens": max_tokens, "temperature": 0, "stop": ["\n"],
                     **(params or {})}) for q in questions]


def qa_metrics(layer: QueryLayer, questions: Sequence[Question], params: dict | None = None,
               *, generate: bool = True, max_tokens: int = MAX_TOKENS) -> QAMetrics:
    """Score every question through ``layer``: one ``option_loglik`` request each, plus one
    greedy generation each when ``generate`` (for ROUGE-L), all in one submit."""
    if not questions:
        raise InputError("the question set is empty; give at least one question")
    requests = question_requests(questions, params)
    if generate:
        requests += generation_requests(questions, params, max_tokens)
    answers = layer.submit(requests)
    n = len(questions)
    ratios, probs, correct = [], [], []
    for q, answer in zip(questions, answers[:n], strict=True):
        ll, ntok = option_logliks(q, answer), _ntokens(q, answer)
        ratios.append(truth_ratio(ll, ntok, q.answer))
        probs.append(answer_probability(ll, ntok, q.answer))
        correct.append(int(ll.argmax()) == q.answer)
    texts = [str(a.output.get("text", "")) for a in answers[n:]]
    rouge = [rouge_l_recall(t, q.choices[q.answer]) for t, q in zip(texts, questions,
                                                                      strict=False)]
    return QAMetrics(np.array(ratios), np.array(probs), np.array(correct, dtype=bool),
                     np.array(rouge), texts)


def _ntokens(question: Question, answer: Response) -> np.ndarray:
    n = np.asarray(answer.output.get("ntokens"), dtype=float)
    if n.shape != (len(question.choices),) or not (n >= 1).all():
        raise TargetError(f"target answered option_loglik without {len(question.choices)} "
                          f"positive 'ntokens' (got {answer.output.get('ntokens')!r}); the "
                          f"truth ratio needs each option's token count")
    return n


def tofu_report(layer: QueryLayer, sets: Mapping[str, Sequence[Question]], *,
                forget: str = "forget", utility: Sequence[str] = ("retain",),
                reference: ArrayLike | None = None, params: dict | None = None,
                max_tokens: int = MAX_TOKENS) -> tuple[dict[str, float], dict[str, QAMetrics]]:
    """TOFU figures of the model behind ``layer`` on named question sets.

    Args:
        layer: the model's query layer.
        sets: set name -> questions; must hold ``forget`` and every name in ``utility``.
        forget: the forget set's name (its truth-ratio statistic is the forget form).
        utility: the sets whose probability, ROUGE-L and truth-ratio statistic make up
            model utility (TOFU: retain, real authors, world facts).
        reference: truth ratios of the retain reference model on the forget set (same
            questions, same order); None leaves forget quality out.
        params, max_tokens: added to every request; generation length.

    Returns:
        (figures, per-set metrics): figures are flat ``{set}_{metric}`` keys (metric in
        probability, rouge_l, truth_ratio, accuracy) plus ``model_utility`` and, with a
        reference, ``forget_quality``.
    """
    missing = [s for s in (forget, *utility) if s not in sets]
    if missing:
        raise InputError(f"no question set named {', '.join(map(repr, missing))}; sets are "
                         f"{', '.join(map(repr, sets))}")
    per_set = {name: qa_metrics(layer, qs, params, max_tokens=max_tokens)
               for name, qs in sets.items()}
    figures: dict[str, float] = {}
    for name, m in per_set.items():
        figures.update({f"{name}_{k}": v for k, v in m.summary(name == forget).items()})
    figures["model_utility"] = model_utility(
        [figures[f"{name}_{k}"] for name in utility for k in METRICS])
    if reference is not None:
        if len(np.asarray(reference)) != len(sets[forget]):
            raise InputError(f"reference holds {len(np.asarray(reference))} truth ratios for "
                             f"{len(sets[forget])} forget questions; score the same questions")
        figures["forget_quality"] = forget_quality(per_set[forget].truth_ratio, reference)
    return figures, per_set
