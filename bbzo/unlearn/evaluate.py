"""Multiple-choice accuracy through the query layer: each question is one ``option_loglik``
request (``Question: ...\\nAnswer:`` followed by each option, as SECA scores them); the
model's answer is the option of highest log-likelihood.

A question's ``p_correct`` is the softmax over its options' log-likelihoods at the right option:
a smooth stand-in for accuracy that the strength search can follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bbzo.attacks.seca.objective import OPTION_PROMPT
from bbzo.attacks.seca.questions import Question
from bbzo.blackbox.protocol import Request, Response
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.errors import TargetError


@dataclass
class Scores:
    """Per-question results of one pass over a question set.

    Attributes:
        correct: (n,) bool, the best-scored option is the right one.
        p_correct: (n,) softmax probability of the right option.
    """

    correct: np.ndarray
    p_correct: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())


def question_requests(questions: Sequence[Question], params: dict | None = None) -> list[Request]:
    """One ``option_loglik`` request per question (``params`` added to each)."""
    return [Request("option_loglik", {"prompt": OPTION_PROMPT.format(question=q.question),
                                      "options": [" " + c for c in q.choices]}, params or {})
            for q in questions]


def score(layer: QueryLayer, questions: Sequence[Question],
          params: dict | None = None) -> Scores:
    """Score every question through ``layer`` (cached answers are free)."""
    return score_many(layer, questions, [params or {}])[0]


def score_many(layer: QueryLayer, questions: Sequence[Question],
               params: Sequence[dict]) -> list[Scores]:
    """``score`` once per entry of ``params``, all requests in one submit (shared batches)."""
    requests = [r for p in params for r in question_requests(questions, p)]
    answers = layer.submit(requests)
    n = len(questions)
    return [_read(questions, answers[i * n:(i + 1) * n]) for i in range(len(params))]


def option_logliks(question: Question, answer: Response) -> np.ndarray:
    """The (k,) option log-likelihoods of ``answer`` to ``question``'s request, checked."""
    ll = np.asarray(answer.output.get("loglik"), dtype=float)
    if ll.shape != (len(question.choices),) or not np.isfinite(ll).all():
        raise TargetError(f"target answered option_loglik with {ll.tolist()!r}; expected "
                          f"{len(question.choices)} finite numbers")
    return ll


def _read(questions: Sequence[Question], answers: Sequence[Response]) -> Scores:
    correct, p = [], []
    for q, answer in zip(questions, answers, strict=True):
        ll = option_logliks(q, answer)
        w = np.exp(ll - ll.max())
        p.append(w[q.answer] / w.sum())
        correct.append(int(ll.argmax()) == q.answer)
    return Scores(np.array(correct, dtype=bool), np.array(p))


def chance(questions: Sequence[Question]) -> float:
    """Accuracy of a uniform guess: the mean of 1 / options."""
    return float(np.mean([1.0 / len(q.choices) for q in questions]))


def texts(questions: Sequence[Question]) -> list[str]:
    """What the guard's classifier reads for each question: its option-scoring prompt."""
    return [OPTION_PROMPT.format(question=q.question) for q in questions]
