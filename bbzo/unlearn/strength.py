"""The corruption strength: found by zeroth-order search on the shared engine
(``bbzo.minimize``), or by a grid at the same number of evaluations (the baseline).

Both work on log10 strengths, so one step size fits strengths from 1e-3 to 1e7. The objective is
given as ``objective(L)`` with L (n, dims) log10 strengths → (n,) values (lower is better), e.g.
|forget metric(10^L) − reference|; ``forget_distance`` builds that one from a query layer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bbzo.attacks.seca.questions import Question
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.zo import minimize
from bbzo.checks import int_at_least
from bbzo.errors import InputError
from bbzo.unlearn.corruptions import Corruption
from bbzo.unlearn.evaluate import score_many
from bbzo.unlearn.guard import forced

LogObjective = Callable[[np.ndarray], np.ndarray]
LOW, HIGH = -3.0, 7.0  # log10 strength range searched


@dataclass
class StrengthResult:
    """Outcome of a strength search.

    Attributes:
        strength: best strength found (10 ** log10_strength), one value per dimension.
        value: the objective there.
        evaluations: objective evaluations spent (points, not model requests).
        seconds: wall time.
        method: ``zo`` or ``grid``.
        history: every evaluated point: ``{"log10_strength", "value"}``, in order.
    """

    strength: list[float]
    value: float
    evaluations: int
    seconds: float
    method: str
    history: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"strength": self.strength, "value": self.value, "evaluations": self.evaluations,
                "seconds": self.seconds, "method": self.method}


class _Recorder:
    """``objective`` with its arguments clipped to [low, high] and every point recorded."""

    def __init__(self, objective: LogObjective, low: float, high: float) -> None:
        self.objective, self.low, self.high = objective, low, high
        self.history: list[dict] = []

    def __call__(self, points: np.ndarray) -> np.ndarray:
        points = np.clip(np.asarray(points, dtype=float), self.low, self.high)
        values = np.asarray(self.objective(points), dtype=float).reshape(len(points))
        self.history += [{"log10_strength": p.tolist(), "value": float(v)}
                         for p, v in zip(points, values, strict=True)]
        return values

    def result(self, method: str, start: float) -> StrengthResult:
        best = min(self.history, key=lambda h: h["value"])
        return StrengthResult([10.0 ** v for v in best["log10_strength"]], best["value"],
                              len(self.history), time.perf_counter() - start, method,
                              self.history)


def _range(low: float, high: float) -> None:
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise InputError(f"the log10 strength range needs low < high, got {low}, {high}")


def search_strength(objective: LogObjective, dims: int = 1, *, start: float = 0.0,
                    evaluations: int = 16, mu: float = 0.5, lr: float = 0.5, q: int = 1,
                    seed: int = 0, low: float = LOW, high: float = HIGH) -> StrengthResult:
    """Zeroth-order search of the log10 strength with ``bbzo.minimize`` (ZO-signSGD on a
    central random-direction estimate: every step moves each log10 strength by ``lr``).

    Args:
        objective: ``objective(L)`` (n, dims) log10 strengths → (n,) values.
        dims: 1 for a scalar strength, more for one strength per dimension.
        start: log10 strength to start from (every dimension).
        evaluations: the budget of objective evaluations (points).
        mu: smoothing radius in log10 units.
        lr: step in log10 units.
        q: random directions per step (2q evaluations per step).
        seed: seeds the directions.
        low, high: log10 strengths are clipped to this range.
    """
    _range(low, high)
    int_at_least("dims", dims)
    int_at_least("evaluations", evaluations, 2 * q)
    recorder, began = _Recorder(objective, low, high), time.perf_counter()
    minimize(recorder, np.full(dims, float(start)), method="zo-sign-sgd", estimator="rge",
                  q=q, mu=mu, lr=lr, budget=evaluations, seed=seed)
    return recorder.result("zo", began)


def grid_strength(objective: LogObjective, dims: int = 1, *, evaluations: int = 16,
                  low: float = LOW, high: float = HIGH) -> StrengthResult:
    """The baseline: ``evaluations`` log-spaced strengths from 10^low to 10^high (the same in
    every dimension), the best one kept."""
    _range(low, high)
    int_at_least("evaluations", evaluations)
    recorder, began = _Recorder(objective, low, high), time.perf_counter()
    recorder(np.repeat(np.linspace(low, high, evaluations)[:, None], dims, axis=1))
    return recorder.result("grid", began)


def forget_distance(layer: QueryLayer, questions: Sequence[Question], corruption: Corruption,
                    reference: float, tokens: str = "all_but_last") -> LogObjective:
    """Objective |accuracy − reference| + |mean p(correct) − reference| of the model with every
    prompt of ``questions`` corrupted at strength 10^L; each point costs one request per
    question, all through ``layer`` (the points of one call in one submit)."""
    def objective(points: np.ndarray) -> np.ndarray:
        params = [forced(corruption, 10.0 ** np.asarray(p), tokens) for p in points]
        scored = score_many(layer, questions, params)  # every point in one submit
        return np.array([abs(s.accuracy - reference) + abs(float(s.p_correct.mean()) - reference)
                         for s in scored])

    return objective
