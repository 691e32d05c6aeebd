"""Thresholds for a classifier's scores: a prompt is flagged when its score >= threshold.

- ``threshold_for_fpr``: at most a fraction ``fpr`` of held-out negatives flagged (on the
  calibration set itself; on new negatives the rate is ``fpr`` up to sampling error).
- ``conformal_threshold``: split-conformal, for exchangeable positives the chance that a new
  positive is flagged is at least ``recall`` (and below ``recall + 1/(n+1)`` without ties).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from bbzo.errors import InputError


def _scores(scores: Sequence[float], what: str) -> np.ndarray:
    s = np.asarray(scores, dtype=float).ravel()
    if s.size == 0 or not np.isfinite(s).all():
        raise InputError(f"{what} scores must be a non-empty list of finite numbers")
    return s


def _rate(value: float, name: str) -> float:
    if not isinstance(value, int | float) or not 0 < value < 1:
        raise InputError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def threshold_for_fpr(negative_scores: Sequence[float], fpr: float) -> float:
    """The smallest threshold that flags at most ⌊fpr·n⌋ of the n negative scores."""
    s = np.sort(_scores(negative_scores, "negative"))[::-1]
    k = math.floor(_rate(fpr, "fpr") * s.size)
    if k >= s.size:
        return float(s[-1])
    return float(np.nextafter(s[k], np.inf))  # flags exactly the scores above s[k]


def conformal_threshold(positive_scores: Sequence[float], recall: float) -> float:
    """Split-conformal threshold: the ⌊(n+1)(1−recall)⌋-th smallest positive score (−inf when
    that rank is 0: too few positives for the guarantee, so everything is flagged)."""
    s = np.sort(_scores(positive_scores, "positive"))
    rank = math.floor((s.size + 1) * (1.0 - _rate(recall, "recall")))
    return float(s[rank - 1]) if rank >= 1 else -math.inf


def flag_rates(scores: Sequence[float], labels: Sequence[int], threshold: float) -> dict:
    """``{"fpr", "fnr", "negatives", "positives"}`` of flagging ``scores >= threshold``
    (a rate is None when its class is absent)."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=int)
    flagged = s >= threshold
    neg, pos = y == 0, y == 1
    return {"fpr": float(flagged[neg].mean()) if neg.any() else None,
            "fnr": float((~flagged[pos]).mean()) if pos.any() else None,
            "negatives": int(neg.sum()), "positives": int(pos.sum())}
