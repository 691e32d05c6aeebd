"""k-way marginal workloads of an integer-coded table, answered as normalised counts.

A workload is a tuple of column indices (a, b, ...); its marginal has one cell per combination
of their codes, and its answer on a table of N rows is the (cells,) vector of counts / N.

Sensitivity under replace-one neighbours with N public: replacing one row moves one count from
the old row's cell to the new row's cell (or leaves the marginal unchanged when both rows fall
in the same cell), so the count vector changes by at most −1 in one cell and +1 in another:
ℓ2 norm √(1² + 1²) = √2, and the normalised answer by √2/N. ``w`` workloads answered together
change by at most √(2w)/N (each marginal can move at most one unit of mass). The largest
absolute error of one workload's answers (used to select workloads) moves by at most 1/N.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import numpy as np

from bbzo.errors import InputError

QUERY_CLASSES = {"1way": 1, "2way": 2, "3way": 3}
MAX_CELLS = 1 << 24  # cells a fitted workload set may hold (memory: 8 bytes each, several copies)

Workload = tuple[int, ...]


def parse_query_classes(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Query class names from ``"2way,3way"`` or a sequence; unknown names are an error."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in QUERY_CLASSES]
    if unknown or not names:
        raise InputError(f"unknown query class {unknown[0] if unknown else spec!r}; choose "
                         f"from {', '.join(QUERY_CLASSES)} (comma-separated)")
    return tuple(dict.fromkeys(names))


def class_workloads(columns: int, query_class: str) -> list[Workload]:
    """All workloads of a class on ``columns`` columns (every k-subset, in lexicographic
    order)."""
    k = QUERY_CLASSES[query_class]
    if k > columns:
        raise InputError(f"{query_class} marginals need at least {k} columns, the domain has "
                         f"{columns}")
    return list(combinations(range(columns), k))


def marginal_sensitivity(rows: int, workloads: int = 1) -> float:
    """ℓ2 sensitivity √(2·workloads)/N of ``workloads`` normalised marginals on N rows."""
    return math.sqrt(2.0 * workloads) / rows


def workload_label(workload: Workload, names: Sequence[str]) -> str:
    """``"age,sex"``: the column names of a workload."""
    return ",".join(names[j] for j in workload)


class Marginals:
    """The cells of a list of marginal workloads on columns of domain sizes ``sizes`` (m,).

    Workload i owns the cells ``slices[i]`` of the flat cell vector (``cells`` in all); a row
    falls in cell ``offsets[i] + Σ_j row[cols[i, j]] * strides[i, j]`` of workload i.
    """

    def __init__(self, sizes: np.ndarray, workloads: Sequence[Workload]) -> None:
        sizes = np.asarray(sizes, dtype=np.int64)
        if not workloads:
            raise InputError("a marginal query set needs at least one workload")
        width = max(len(w) for w in workloads)
        self.workloads = [tuple(int(c) for c in w) for w in workloads]
        self.cols = np.zeros((len(workloads), width), dtype=np.int64)
        self.strides = np.zeros((len(workloads), width), dtype=np.int64)
        sizes_of = []
        for i, w in enumerate(self.workloads):
            shape = sizes[list(w)]
            self.cols[i, :len(w)] = w
            self.strides[i, :len(w)] = np.cumprod(np.r_[shape[1:], 1][::-1])[::-1]
            sizes_of.append(int(np.prod(shape)))
        self.sizes = np.array(sizes_of, dtype=np.int64)
        self.offsets = np.r_[0, np.cumsum(self.sizes)[:-1]]
        self.cells = int(self.sizes.sum())
        if self.cells > MAX_CELLS:
            raise InputError(f"these {len(workloads)} workloads hold {self.cells:,} cells, more "
                             f"than {MAX_CELLS:,}; use --mode adaptive, fewer columns or coarser "
                             f"numeric bins")
        self.slices = [slice(int(o), int(o + s)) for o, s in zip(self.offsets, self.sizes,
                                                                 strict=True)]

    def __len__(self) -> int:
        return len(self.workloads)

    def cell_index(self, rows: np.ndarray) -> np.ndarray:
        """(k, workloads) flat cell indices of the k rows ``rows`` (k, m)."""
        rows = np.asarray(rows, dtype=np.int64)
        return self.offsets + (rows[:, self.cols] * self.strides).sum(axis=-1)

    def counts(self, table: np.ndarray) -> np.ndarray:
        """(cells,) int64 counts of ``table`` (N, m)."""
        return np.bincount(self.cell_index(table).ravel(), minlength=self.cells)

    def answers(self, table: np.ndarray) -> np.ndarray:
        """(cells,) float64 normalised counts (each workload's cells sum to 1)."""
        return self.counts(table) / len(table)

    def max_errors(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(workloads,) largest absolute difference of two answer vectors per workload."""
        gaps = np.abs(a - b)
        return np.maximum.reduceat(gaps, self.offsets)


def workload_max_errors(sizes: np.ndarray, workloads: Sequence[Workload], data: np.ndarray,
                        synthetic: np.ndarray) -> np.ndarray:
    """(workloads,) largest absolute error of each workload's normalised answers on
    ``synthetic`` against ``data``, one workload at a time (memory: one marginal)."""
    out = np.empty(len(workloads))
    for i, w in enumerate(workloads):
        one = Marginals(sizes, [w])
        out[i] = one.max_errors(one.answers(data), one.answers(synthetic))[0]
    return out
