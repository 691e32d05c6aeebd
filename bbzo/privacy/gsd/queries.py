"""Workloads of an integer-coded table, answered as normalised counts: k-way marginals and
prefix queries.

A workload is a tuple of column indices (a, b, ...); its marginal has one cell per combination
of their codes, and its answer on a table of N rows is the (cells,) vector of counts / N.

Sensitivity under replace-one neighbours with N public: replacing one row moves one count from
the old row's cell to the new row's cell (or leaves the marginal unchanged when both rows fall
in the same cell), so the count vector changes by at most −1 in one cell and +1 in another:
ℓ2 norm √(1² + 1²) = √2, and the normalised answer by √2/N. ``w`` workloads answered together
change by at most √(2w)/N (each marginal can move at most one unit of mass). The largest
absolute error of one workload's answers (used to select workloads) moves by at most 1/N.

A prefix workload ``Prefix(a, j)`` (column j ordinal: its codes are ordered) has one query per
code c of column a and threshold t of column j: the share of rows with x_a = c and x_j ≤ t,
a non-differentiable threshold query. Replacing a row removes it from at most B_j = size_j
queries and adds the new row to at most B_j, so the ℓ2 sensitivity is √(2·B_j)/N.

Every query set tells, for a batch of rows changed from ``old`` to ``new``, which answer
entries change and by how many counts (``changes``): what incremental fitness needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import numpy as np

from bbzo.errors import InputError

QUERY_CLASSES = {"1way": 1, "2way": 2, "3way": 3, "prefix": 2}
MAX_CELLS = 1 << 24  # cells a fitted workload set may hold (memory: 8 bytes each, several copies)

Workload = tuple[int, ...]


class Prefix(tuple):
    """A prefix workload: (a, j), column a's codes × thresholds on ordinal column j. Never
    equal to the marginal workload (a, j): the two are distinct keys."""

    def __new__(cls, a: int, j: int) -> Prefix:
        return super().__new__(cls, (int(a), int(j)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Prefix) and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(("prefix", *self))


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
    """All workloads of a class on ``columns`` columns: every k-subset in lexicographic order
    (k-way marginals) or every ordered pair (a, j), a ≠ j (prefix: ``Prefix``; column j's
    codes are taken in order, which is meaningful for ordinal ones: codes, numeric bins)."""
    k = QUERY_CLASSES[query_class]
    if k > columns:
        raise InputError(f"{query_class} queries need at least {k} columns, the domain has "
                         f"{columns}")
    if query_class == "prefix":
        return [Prefix(a, j) for a in range(columns) for j in range(columns) if a != j]
    return list(combinations(range(columns), k))


def marginal_sensitivity(rows: int, workloads: int = 1) -> float:
    """ℓ2 sensitivity √(2·workloads)/N of ``workloads`` normalised marginals on N rows."""
    return math.sqrt(2.0 * workloads) / rows


def sensitivity(workload: Workload, sizes: np.ndarray, rows: int) -> float:
    """ℓ2 sensitivity of one workload's normalised answers on N = ``rows`` rows."""
    if isinstance(workload, Prefix):
        return math.sqrt(2.0 * int(sizes[workload[1]])) / rows
    return marginal_sensitivity(rows)


def workload_label(workload: Workload, names: Sequence[str]) -> str:
    """``"age,sex"`` (a marginal) or ``"prefix sex,age<=t"``: the columns of a workload."""
    if isinstance(workload, Prefix):
        return f"prefix {names[workload[0]]},{names[workload[1]]}<=t"
    return ",".join(names[j] for j in workload)


def query_set(sizes: np.ndarray, workloads: Sequence[Workload]) -> QuerySet:
    """The answers of ``workloads`` in the given order: marginals first, then prefixes (the
    caller orders them so, see ``ordered``)."""
    workloads = list(workloads)
    marginals = [w for w in workloads if not isinstance(w, Prefix)]
    prefixes = [w for w in workloads if isinstance(w, Prefix)]
    if workloads != marginals + prefixes:
        raise InputError("order workloads marginals first, then prefixes (see ordered())")
    parts = ([Marginals(sizes, marginals)] if marginals else []) + \
        ([Prefixes(sizes, prefixes)] if prefixes else [])
    return QuerySet(parts)


def ordered(workloads: Sequence[Workload]) -> list[Workload]:
    """``workloads`` with marginals first, then prefixes, each in their given order."""
    return [w for w in workloads if not isinstance(w, Prefix)] + \
        [w for w in workloads if isinstance(w, Prefix)]


def _layout(sizes: np.ndarray, what: str) -> tuple[np.ndarray, int, list[slice]]:
    """Offsets (n,) int64, total and slices of consecutive blocks of ``sizes`` entries; more
    than ``MAX_CELLS`` in all is an error."""
    offsets = np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64)
    cells = int(np.sum(sizes))
    if cells > MAX_CELLS:
        raise InputError(f"these {what} hold {cells:,} cells, more than {MAX_CELLS:,}; use "
                         f"--mode adaptive (marginals), fewer columns or coarser numeric bins")
    return offsets, cells, [slice(int(o), int(o + n)) for o, n in zip(offsets, sizes,
                                                                       strict=True)]


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
        self.offsets, self.cells, self.slices = _layout(self.sizes, "marginal workloads")

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

    def changes(self, old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Entries (k, L) and count steps (k, L) that change when rows ``old`` (k, m) become
        ``new``; an entry may repeat only with step 0."""
        cell_old, cell_new = self.cell_index(old), self.cell_index(new)
        moved = (cell_old != cell_new).astype(np.int32)
        return (np.concatenate([cell_new, cell_old], axis=1),
                np.concatenate([moved, -moved], axis=1))


class Prefixes:
    """Prefix workloads ``Prefix(a, j)``: entry ``offsets[i] + c * B_j + t`` counts the rows
    with x_a = c and x_j ≤ t (same attributes as ``Marginals``)."""

    def __init__(self, sizes: np.ndarray, workloads: Sequence[Prefix]) -> None:
        sizes = np.asarray(sizes, dtype=np.int64)
        self.workloads = list(workloads)
        self.a = np.array([w[0] for w in workloads], dtype=np.int64)
        self.j = np.array([w[1] for w in workloads], dtype=np.int64)
        self.width = sizes[self.j]
        self.sizes = sizes[self.a] * self.width
        self.offsets, self.cells, self.slices = _layout(self.sizes, "prefix workloads")
        self._steps = np.arange(int(self.width.max()))
        self._valid = self._steps < self.width[:, None]  # (P, Bmax)
        self._touching = [np.flatnonzero((self.a == c) | (self.j == c))
                          for c in range(len(sizes))]  # workloads a change in column c moves

    def __len__(self) -> int:
        return len(self.workloads)

    def counts(self, table: np.ndarray) -> np.ndarray:
        table = np.asarray(table, dtype=np.int64)
        out = []
        for a, j, width, size in zip(self.a, self.j, self.width, self.sizes, strict=True):
            cells = np.bincount(table[:, a] * width + table[:, j], minlength=size)
            out.append(cells.reshape(-1, width).cumsum(axis=1).ravel())
        return np.concatenate(out)

    def answers(self, table: np.ndarray) -> np.ndarray:
        return self.counts(table) / len(table)

    def changes(self, old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As ``Marginals.changes`` for rows differing in at most one column: the new row's
        queries +1, the old row's −1 (netted on one row of queries when the category c is
        unchanged), only in the workloads containing the changed column (sparse); padding
        entries step 0."""
        old, new = np.asarray(old, dtype=np.int64), np.asarray(new, dtype=np.int64)
        differ = old != new
        if (differ.sum(axis=1) > 1).any():
            raise InputError("Prefixes.changes takes rows that differ in one column at most")
        column = differ.argmax(axis=1)
        length = 2 * self._steps.size * max(len(p) for p in self._touching)
        index = np.zeros((len(old), length), dtype=np.int64)
        steps = np.zeros((len(old), length), dtype=np.int32)
        for c in np.unique(column):
            rows = np.flatnonzero(column == c)
            i, s = self._changes_in(self._touching[c], old[rows], new[rows])
            index[rows, :i.shape[1]], steps[rows, :s.shape[1]] = i, s
        return index, steps

    def _changes_in(self, p: np.ndarray, old: np.ndarray,
                    new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``changes`` restricted to the workloads ``p``: (k, 2·len(p)·Bmax) each."""
        a, j, width, valid = self.a[p], self.j[p], self.width[p, None], self._valid[p]
        c_old, c_new = old[:, a], new[:, a]  # (k, P)
        up_old = (self._steps >= old[:, j, None]) & valid  # (k, P, Bmax)
        up_new = (self._steps >= new[:, j, None]) & valid
        same = (c_old == c_new)[..., None]
        base = self.offsets[p, None]

        def index(c: np.ndarray) -> np.ndarray:
            return np.where(valid, base + c[..., None] * width + self._steps, base)

        step_new = up_new.astype(np.int32) - (same & up_old)
        step_old = -(up_old & ~same).astype(np.int32)
        k = len(old)
        return (np.concatenate([index(c_new).reshape(k, -1), index(c_old).reshape(k, -1)], 1),
                np.concatenate([step_new.reshape(k, -1), step_old.reshape(k, -1)], 1))


class QuerySet:
    """Several query sets answered as one vector (their entries one after another)."""

    def __init__(self, parts: Sequence[Marginals | Prefixes]) -> None:
        self.parts = list(parts)
        self.bases, self.cells, _ = _layout(np.array([p.cells for p in self.parts]),
                                            "query classes")
        self.workloads = [w for p in self.parts for w in p.workloads]
        self.slices = [slice(s.start + int(b), s.stop + int(b))
                       for p, b in zip(self.parts, self.bases, strict=True) for s in p.slices]

    def counts(self, table: np.ndarray) -> np.ndarray:
        return np.concatenate([p.counts(table) for p in self.parts])

    def answers(self, table: np.ndarray) -> np.ndarray:
        return self.counts(table) / len(table)

    def changes(self, old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pieces = [p.changes(old, new) for p in self.parts]
        return (np.concatenate([i + b for (i, _), b in zip(pieces, self.bases, strict=True)], 1),
                np.concatenate([s for _, s in pieces], 1))


def workload_max_errors(sizes: np.ndarray, workloads: Sequence[Workload], data: np.ndarray,
                        synthetic: np.ndarray) -> np.ndarray:
    """(workloads,) largest absolute error of each workload's normalised answers on
    ``synthetic`` against ``data``, one workload at a time (memory: one marginal)."""
    out = np.empty(len(workloads))
    for i, w in enumerate(workloads):
        one = query_set(sizes, [w])
        out[i] = np.abs(one.answers(data) - one.answers(synthetic)).max()
    return out
