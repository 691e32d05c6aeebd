"""Utility of a synthetic table measured against the true data: its error on the marginal and
prefix queries, and machine-learning efficacy (train on synthetic, test on real).

NOT PRIVATE: it reads the private table again and its numbers are not protected by the
ledger's guarantee. Report them only when the user asks for evaluation, marked as such.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bbzo.errors import InputError
from bbzo.privacy.gsd.domain import Domain
from bbzo.privacy.gsd.queries import (
    QUERY_CLASSES,
    class_workloads,
    parse_query_classes,
    query_set,
)

NON_PRIVATE_NOTE = ("not differentially private: measured on the true data, outside the "
                    "privacy budget")


def marginal_errors(sizes: np.ndarray, data: np.ndarray, synthetic: np.ndarray,
                    classes: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per query class: ``max`` (largest absolute error of one normalised answer: a marginal
    cell or a prefix query), ``mean`` (mean absolute error over all of them) and
    ``mean_workload_max`` (mean over workloads of each one's largest error). One workload at
    a time (memory: one workload)."""
    out = {}
    for name in classes:
        queries = (query_set(sizes, [w]) for w in class_workloads(data.shape[1], name))
        out[name] = _class_errors(np.abs(q.answers(data) - q.answers(synthetic))
                                  for q in queries)
    return out


class ErrorMeter:
    """``marginal_errors`` of many synthetic tables against one true table, whose answers are
    computed once (memory: every workload's answers, 8 bytes each; adult's 3-way marginals
    hold 21 M cells). Call it with a synthetic table (N′, m)."""

    def __init__(self, sizes: np.ndarray, data: np.ndarray, classes: Sequence[str]) -> None:
        self.truth = {}
        for name in classes:
            queries = [query_set(sizes, [w]) for w in class_workloads(data.shape[1], name)]
            self.truth[name] = [(q, q.answers(data)) for q in queries]

    def __call__(self, synthetic: np.ndarray) -> dict[str, dict[str, float]]:
        return {name: _class_errors(np.abs(truth - q.answers(synthetic)) for q, truth in pairs)
                for name, pairs in self.truth.items()}


def _class_errors(gaps: Iterable[np.ndarray]) -> dict[str, float]:
    """``max``, ``mean`` and ``mean_workload_max`` of the absolute errors, one array per
    workload."""
    largest, total, cells = [], 0.0, 0
    for gap in gaps:
        largest.append(float(gap.max()))
        total += float(gap.sum())
        cells += gap.size
    return {"max": max(largest), "mean": total / cells,
            "mean_workload_max": float(np.mean(largest))}


def ml_efficacy(sizes: np.ndarray, data: np.ndarray, synthetic: np.ndarray, target: int, *,
                test_fraction: float = 0.3, seed: int = 0) -> dict[str, Any]:
    """Machine-learning efficacy: a logistic regression on one-hot features predicts column
    ``target`` from the others, trained on ``synthetic`` (N′, m) and, for comparison, on a
    random ``1 − test_fraction`` of the real ``data`` (N, m); both are tested on the same
    held-out real rows (the rest). Codes are integers below ``sizes`` (m,).

    Returns ``synthetic`` and ``real`` scores (``accuracy``, ``balanced_accuracy``,
    ``f1_macro``), their ``ratio`` (synthetic / real, per score) and the row counts. A training
    set with one target class predicts that class. NOT PRIVATE: reads the true data."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
    from sklearn.preprocessing import OneHotEncoder

    sizes = np.asarray(sizes, dtype=np.int64)
    if not 0 <= target < len(sizes):
        raise InputError(f"target column index {target} is outside 0..{len(sizes) - 1}")
    if not 0 < test_fraction < 1:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(data))
    cut = len(data) - max(1, int(round(test_fraction * len(data))))
    if cut < 1:
        raise InputError(f"{len(data)} real rows cannot be split into training and test rows; "
                         f"give at least 2")
    train, test = data[order[:cut]], data[order[cut:]]
    features = [j for j in range(len(sizes)) if j != target]
    encoder = OneHotEncoder(categories=[np.arange(sizes[j]) for j in features])
    encoder.fit(np.zeros((1, len(features)), dtype=np.int64))
    x_test, y_test = encoder.transform(test[:, features]), test[:, target]
    scores = {}
    for name, table in (("synthetic", synthetic), ("real", train)):
        predicted = _fit_predict(encoder.transform(table[:, features]), table[:, target], x_test)
        scores[name] = {
            "accuracy": float(accuracy_score(y_test, predicted)),
            "balanced_accuracy": float(balanced_accuracy_score(y_test, predicted)),
            "f1_macro": float(f1_score(y_test, predicted, average="macro", zero_division=0))}
    ratio = {k: scores["synthetic"][k] / v if v > 0 else float("nan")
             for k, v in scores["real"].items()}
    return {**scores, "ratio": ratio, "model": "logistic regression on one-hot features",
            "train_rows": {"synthetic": len(synthetic), "real": len(train)},
            "test_rows": len(test)}


def _fit_predict(x_train: Any, y_train: np.ndarray, x_test: Any) -> np.ndarray:
    """Predictions of a logistic regression fitted on (x_train, y_train); a constant when
    the training labels hold one class."""
    from sklearn.linear_model import LogisticRegression

    classes = np.unique(y_train)
    if classes.size == 1:
        return np.full(x_test.shape[0], classes[0])
    model = LogisticRegression(max_iter=1000)
    return model.fit(x_train, y_train).predict(x_test)


def evaluate_run(run: str | os.PathLike, data: Any, target: str, *,
                 domain: str | os.PathLike | None = None,
                 classes: Sequence[str] | None = None, test_fraction: float = 0.3,
                 seed: int = 0) -> dict[str, Any]:
    """Evaluate the ``synthetic.csv`` of a ``synth fit`` run folder against the true ``data``
    (a CSV path, DataFrame or mapping of columns): ``ml_efficacy`` for column ``target`` and
    ``marginal_errors`` for ``classes`` (default: the run's query classes with 2way and 3way).
    The domain is ``domain`` or the file named in the run's ``config.json``. Every input is
    checked before any model is trained. NOT PRIVATE (the result says so)."""
    folder = Path(run)
    synthetic_file, config_file = folder / "synthetic.csv", folder / "config.json"
    if not synthetic_file.is_file():
        raise InputError(f"{folder} holds no synthetic.csv; give the --out folder of a finished "
                         f"bbzo synth fit run")
    if domain is None:
        try:
            domain = json.loads(config_file.read_text(encoding="utf-8"))["options"]["domain"]
        except (OSError, ValueError, KeyError, TypeError):
            raise InputError(f"cannot read the domain file's name from {config_file}; pass the "
                             f"domain file with --domain") from None
    cols = Domain.from_file(domain)
    if target not in cols.names:
        raise InputError(f"target column {target!r} is not in the domain; choose one of "
                         f"{', '.join(cols.names)}")
    summary = _read_json_or_empty(folder / "summary.json")
    if classes is None:
        classes = [*summary.get("queries", []), "2way", "3way"]
    classes = [c for c in parse_query_classes(list(classes))
               if QUERY_CLASSES[c] <= len(cols)]
    real, synthetic = cols.encode(data), cols.encode(synthetic_file)
    return {"non_private": True, "note": NON_PRIVATE_NOTE, "run": str(folder),
            "target": target, "seed": seed, "test_fraction": test_fraction,
            "ml_efficacy": ml_efficacy(cols.sizes, real, synthetic, cols.names.index(target),
                                       test_fraction=test_fraction, seed=seed),
            "marginal_errors": marginal_errors(cols.sizes, real, synthetic, classes)}


def _read_json_or_empty(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or {} when it is missing or unreadable."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
