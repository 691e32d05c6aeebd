"""Error of a synthetic table on the marginal and prefix queries, measured against the true data.

NOT PRIVATE: it reads the private table again and its numbers are not protected by the
ledger's guarantee. Report them only when the user asks for evaluation, marked as such.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bbzo.privacy.gsd.queries import class_workloads, query_set

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
        largest, total, cells = [], 0.0, 0
        for w in class_workloads(data.shape[1], name):
            one = query_set(sizes, [w])
            gap = np.abs(one.answers(data) - one.answers(synthetic))
            largest.append(float(gap.max()))
            total += float(gap.sum())
            cells += gap.size
        out[name] = {"max": max(largest), "mean": total / cells,
                     "mean_workload_max": float(np.mean(largest))}
    return out
