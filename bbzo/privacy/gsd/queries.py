"""Workloads of an integer-coded table, answered as normalised counts: k-way marginals, prefix
and range queries (intervals of an ordered column, crossed with a categorical one) and
halfspace queries.

A workload's answer on a table of N rows is a vector of counts / N. Sensitivities are ℓ2 under
replace-one neighbours with N public (one row replaced by any other):

* **k-way marginal** ``(a, b, ...)``: one cell per combination of the columns' codes. Replacing
  a row moves one count from the old row's cell to the new row's cell: ℓ2 √2, so √2/N
  normalised. ``w`` marginals answered together move by at most √(2w)/N. The largest absolute
  error of one workload's answers (used to select workloads) moves by at most 1/N.
* **Interval queries** ``Prefix(a, j)`` / ``Range(a, j)``: one query per code c of column a
  (a = −1: not crossed, one "code") and interval I of column j's codes (its bins, ordered):
  the share of rows with x_a = c and x_j ∈ I. Prefixes take the B_j intervals [0, t]; ranges
  all B_j(B_j+1)/2 intervals [lo, hi]. A row whose x_j is bin b lies in n_b of the intervals
  (prefix: B_j − b; range: (b+1)(B_j−b)); replacing it removes it from at most n_b queries and
  adds the new row to at most n_b′, so the ℓ2 sensitivity is √(2·max_b n_b)/N: √(2·B_j)/N for
  prefixes, √(2·max_b (b+1)(B_j−b))/N for ranges.
* **Halfspaces** ``Halfspace(seed, block)``: ``HALFSPACE_BLOCK`` queries
  q_h(x) = 1[⟨w_h, φ(x)⟩ ≥ b_h]. The feature map φ: each numeric column (``numeric``) gives one
  feature, its bin midpoint scaled to [0, 1], (code + 0.5)/size; every other column its one-hot
  code (size features). w_h ~ N(0, I_d) and b_h ~ N(0, m) (m columns, so ‖φ(x)‖² ≤ m) are
  drawn from the public ``numpy.random.default_rng([seed, block])``, never from the data.
  Replacing a row changes each count by at most 1: ℓ2 sensitivity √HALFSPACE_BLOCK/N.

Every query set tells, for a batch of rows changed from ``old`` to ``new``, which answer
entries change and by how many counts (``changes``): what incremental fitness needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import numpy as np

from bbzo.errors import InputError

QUERY_CLASSES = {"1way": 1, "2way": 2, "3way": 3, "prefix": 2, "range": 1, "halfspace": 1}
MAX_CELLS = 1 << 24  # cells a fitted workload set may hold (memory: 8 bytes each, several copies)
HALFSPACE_BLOCK = 100  # halfspace queries per workload
HALFSPACE_BLOCKS = 10  # workloads of the halfspace class (1,000 halfspaces)
_CHUNK = 4096  # rows projected at once when counting halfspaces

Workload = tuple[int, ...]


class Tagged(tuple):
    """A workload key that is not a marginal: never equal to a plain tuple or to a key of
    another tag, so (0, 1), Prefix(0, 1) and Range(0, 1) are distinct keys."""

    tag = ""

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((self.tag, *self))


class Prefix(Tagged):
    """A prefix workload (a, j): column a's codes × thresholds x_j ≤ t on ordered column j."""

    tag = "prefix"

    def __new__(cls, a: int, j: int) -> Prefix:
        return super().__new__(cls, (int(a), int(j)))


class Range(Tagged):
    """A range workload (a, j): column a's codes (a = −1: not crossed) × every interval
    lo ≤ x_j ≤ hi of numeric column j's bins."""

    tag = "range"

    def __new__(cls, a: int, j: int) -> Range:
        return super().__new__(cls, (int(a), int(j)))


class Halfspace(Tagged):
    """A block of ``HALFSPACE_BLOCK`` random halfspace queries drawn from (seed, block)."""

    tag = "halfspace"

    def __new__(cls, seed: int, block: int) -> Halfspace:
        return super().__new__(cls, (int(seed), int(block)))


def is_marginal(workload: Workload) -> bool:
    """Whether ``workload`` is a k-way marginal (a plain tuple of columns)."""
    return not isinstance(workload, Tagged)


def parse_query_classes(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Query class names from ``"2way,3way"`` or a sequence; unknown names are an error."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in QUERY_CLASSES]
    if unknown or not names:
        raise InputError(f"unknown query class {unknown[0] if unknown else spec!r}; choose "
                         f"from {', '.join(QUERY_CLASSES)} (comma-separated)")
    return tuple(dict.fromkeys(names))


def class_workloads(columns: int, query_class: str, *, numeric: Sequence[int] | None = None,
                    seed: int = 0, halfspaces: int = HALFSPACE_BLOCKS) -> list[Workload]:
    """All workloads of a class on ``columns`` columns: every k-subset in lexicographic order
    (k-way marginals); every ordered pair (a, j), a ≠ j (prefix: ``Prefix``; column j's codes
    are taken in order, meaningful for ordinal ones: codes, numeric bins); for each numeric
    column j (``numeric``; None: every column) ``Range(-1, j)`` then ``Range(a, j)`` for every
    non-numeric a; ``halfspaces`` blocks ``Halfspace(seed, i)``."""
    k = QUERY_CLASSES[query_class]
    if k > columns:
        raise InputError(f"{query_class} queries need at least {k} columns, the domain has "
                         f"{columns}")
    if query_class == "prefix":
        return [Prefix(a, j) for a in range(columns) for j in range(columns) if a != j]
    if query_class == "range":
        numbers = list(range(columns)) if numeric is None else sorted(int(j) for j in numeric)
        if not numbers:
            raise InputError("range queries need a numeric column; declare one as {\"type\": "
                             "\"numeric\", \"min\": ..., \"max\": ...} in a rich domain")
        others = [a for a in range(columns) if a not in numbers]
        return [Range(a, j) for j in numbers for a in [-1, *others]]
    if query_class == "halfspace":
        return [Halfspace(seed, i) for i in range(halfspaces)]
    return list(combinations(range(columns), k))


def marginal_sensitivity(rows: int, workloads: int = 1) -> float:
    """ℓ2 sensitivity √(2·workloads)/N of ``workloads`` normalised marginals on N rows."""
    return math.sqrt(2.0 * workloads) / rows


def membership(workload: Prefix | Range, sizes: np.ndarray) -> np.ndarray:
    """(B_j, R) bool: which of the workload's R intervals of column j contain each bin."""
    bins = np.arange(int(sizes[workload[1]]))
    if isinstance(workload, Prefix):
        return bins[:, None] <= bins[None, :]
    low, high = np.triu_indices(bins.size)
    return (bins[:, None] >= low) & (bins[:, None] <= high)


def sensitivity(workload: Workload, sizes: np.ndarray, rows: int) -> float:
    """ℓ2 sensitivity of one workload's normalised answers on N = ``rows`` rows (see the
    module docstring)."""
    if isinstance(workload, Halfspace):
        return math.sqrt(HALFSPACE_BLOCK) / rows
    if isinstance(workload, (Prefix, Range)):
        return math.sqrt(2.0 * int(membership(workload, sizes).sum(axis=1).max())) / rows
    return marginal_sensitivity(rows)


def cells(workload: Workload, sizes: np.ndarray) -> int:
    """Entries of one workload's answer vector."""
    if isinstance(workload, Halfspace):
        return HALFSPACE_BLOCK
    if isinstance(workload, (Prefix, Range)):
        a, j = workload
        return (int(sizes[a]) if a >= 0 else 1) * membership(workload, sizes).shape[1]
    return int(np.prod(np.asarray(sizes)[list(workload)]))


def workload_label(workload: Workload, names: Sequence[str]) -> str:
    """``"age,sex"`` (a marginal), ``"prefix sex,age<=t"``, ``"range sex,age in [lo,hi]"`` or
    ``"halfspaces 3 (seed 0)"``: what a workload asks."""
    if isinstance(workload, Halfspace):
        return f"halfspaces {workload[1]} (seed {workload[0]})"
    if isinstance(workload, Prefix):
        return f"prefix {names[workload[0]]},{names[workload[1]]}<=t"
    if isinstance(workload, Range):
        cross = f"{names[workload[0]]}," if workload[0] >= 0 else ""
        return f"range {cross}{names[workload[1]]} in [lo,hi]"
    return ",".join(names[j] for j in workload)


def _group(workload: Workload) -> int:
    """Rank of a workload's query set in a ``QuerySet``: marginals, intervals, halfspaces."""
    return 2 if isinstance(workload, Halfspace) else 0 if is_marginal(workload) else 1


def query_set(sizes: np.ndarray, workloads: Sequence[Workload], *,
              numeric: Sequence[int] = ()) -> QuerySet:
    """The answers of ``workloads`` in the given order: marginals first, then prefixes and
    ranges, then halfspaces (the caller orders them so, see ``ordered``); ``numeric`` columns
    enter the halfspace feature map as numbers, the others one-hot."""
    workloads = list(workloads)
    if workloads != ordered(workloads):
        raise InputError("order workloads marginals first, then prefixes and ranges, then "
                         "halfspaces (see ordered())")
    kinds = (Marginals, Intervals, Halfspaces)
    parts = []
    for rank, kind in enumerate(kinds):
        group = [w for w in workloads if _group(w) == rank]
        if group:
            parts.append(kind(sizes, group, numeric) if kind is Halfspaces
                         else kind(sizes, group))
    return QuerySet(parts)


def ordered(workloads: Sequence[Workload]) -> list[Workload]:
    """``workloads`` with marginals first, then prefixes and ranges, then halfspaces, each
    in their given order."""
    return sorted(workloads, key=_group)


def _layout(sizes: np.ndarray, what: str) -> tuple[np.ndarray, int, list[slice]]:
    """Offsets (n,) int64, total and slices of consecutive blocks of ``sizes`` entries; more
    than ``MAX_CELLS`` in all is an error."""
    offsets = np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64)
    total = int(np.sum(sizes))
    if total > MAX_CELLS:
        raise InputError(f"these {what} hold {total:,} cells, more than {MAX_CELLS:,}; use "
                         f"--mode adaptive (marginals), fewer columns or coarser numeric bins")
    return offsets, total, [slice(int(o), int(o + n)) for o, n in zip(offsets, sizes,
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


class Intervals:
    """Prefix and range workloads (a, j): entry ``offsets[i] + c * R_i + r`` counts the rows
    with x_a = c (any row when a = −1) and x_j in interval r of ``membership`` (same
    attributes as ``Marginals``)."""

    def __init__(self, sizes: np.ndarray, workloads: Sequence[Prefix | Range]) -> None:
        sizes = np.asarray(sizes, dtype=np.int64)
        self.workloads = list(workloads)
        self.a = np.array([w[0] for w in workloads], dtype=np.int64)
        self.j = np.array([w[1] for w in workloads], dtype=np.int64)
        self.members = [membership(w, sizes) for w in self.workloads]
        self.categories = np.where(self.a >= 0, sizes[self.a], 1)
        self.width = np.array([m.shape[1] for m in self.members], dtype=np.int64)
        self.sizes = self.categories * self.width
        self.offsets, self.cells, self.slices = _layout(self.sizes, "interval workloads")
        self._steps = np.arange(int(self.width.max()))
        self._valid = self._steps < self.width[:, None]  # (P, Rmax)
        bins = int(max(m.shape[0] for m in self.members))
        self._member = np.zeros((len(self.members), bins, self._steps.size), dtype=bool)
        for i, m in enumerate(self.members):
            self._member[i, :m.shape[0], :m.shape[1]] = m
        self._touching = [np.flatnonzero((self.a == c) | (self.j == c))
                          for c in range(len(sizes))]  # workloads a change in column c moves

    def __len__(self) -> int:
        return len(self.workloads)

    def _category(self, rows: np.ndarray, p: np.ndarray | slice) -> np.ndarray:
        """(k, P) codes of the crossing column of workloads ``p`` (0 where not crossed)."""
        return np.where(self.a[p] >= 0, rows[:, self.a[p]], 0)

    def counts(self, table: np.ndarray) -> np.ndarray:
        table = np.asarray(table, dtype=np.int64)
        out = []
        category = self._category(table, slice(None))
        for i, (j, member) in enumerate(zip(self.j, self.members, strict=True)):
            bins = member.shape[0]
            cells = np.bincount(category[:, i] * bins + table[:, j],
                                minlength=int(self.categories[i]) * bins)
            out.append((cells.reshape(-1, bins) @ member.astype(np.int64)).ravel())
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
            raise InputError("Intervals.changes takes rows that differ in one column at most")
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
        """``changes`` restricted to the workloads ``p``: (k, 2·len(p)·Rmax) each."""
        j, width, valid = self.j[p], self.width[p, None], self._valid[p]
        c_old, c_new = self._category(old, p), self._category(new, p)  # (k, P)
        in_old = self._member[p, old[:, j]]  # (k, P, Rmax)
        in_new = self._member[p, new[:, j]]
        same = (c_old == c_new)[..., None]
        base = self.offsets[p, None]

        def index(c: np.ndarray) -> np.ndarray:
            return np.where(valid, base + c[..., None] * width + self._steps, base)

        step_new = in_new.astype(np.int32) - (same & in_old)
        step_old = -(in_old & ~same).astype(np.int32)
        k = len(old)
        return (np.concatenate([index(c_new).reshape(k, -1), index(c_old).reshape(k, -1)], 1),
                np.concatenate([step_new.reshape(k, -1), step_old.reshape(k, -1)], 1))


class Halfspaces:
    """Halfspace workloads ``Halfspace(seed, block)`` (see the module docstring for φ, w, b):
    entry ``offsets[i] + h`` counts the rows with ⟨w_h, φ(x)⟩ ≥ b_h. A row's projection is
    summed from per-column tables ``project[j]`` (size_j, H) in column order, the same sum for
    a full count and for a changed row, so incremental counts equal full ones exactly."""

    def __init__(self, sizes: np.ndarray, workloads: Sequence[Halfspace],
                 numeric: Sequence[int] = ()) -> None:
        sizes = np.asarray(sizes, dtype=np.int64)
        self.workloads = list(workloads)
        numeric = set(int(j) for j in numeric)
        width = [1 if j in numeric else int(s) for j, s in enumerate(sizes)]
        starts = np.r_[0, np.cumsum(width)[:-1]]
        weights, bias = [], []
        for seed, block in self.workloads:
            rng = np.random.default_rng([seed, block])
            weights.append(rng.normal(size=(HALFSPACE_BLOCK, int(sum(width)))))
            bias.append(rng.normal(0.0, math.sqrt(len(sizes)), HALFSPACE_BLOCK))
        w = np.concatenate(weights)  # (H, d)
        self.bias = np.concatenate(bias)
        self.project = []
        for j, size in enumerate(sizes):
            codes = np.arange(int(size))
            if j in numeric:
                self.project.append(np.outer((codes + 0.5) / size, w[:, starts[j]]))
            else:
                self.project.append(w[:, starts[j] + codes].T.copy())
        self.sizes = np.full(len(self.workloads), HALFSPACE_BLOCK, dtype=np.int64)
        self.offsets, self.cells, self.slices = _layout(self.sizes, "halfspace workloads")

    def __len__(self) -> int:
        return len(self.workloads)

    def inside(self, rows: np.ndarray) -> np.ndarray:
        """(k, H) bool: which halfspaces contain each of the rows (k, m)."""
        rows = np.asarray(rows, dtype=np.int64)
        total = self.project[0][rows[:, 0]].copy()
        for j in range(1, len(self.project)):
            total += self.project[j][rows[:, j]]
        return total >= self.bias

    def counts(self, table: np.ndarray) -> np.ndarray:
        out = np.zeros(self.cells, dtype=np.int64)
        for start in range(0, len(table), _CHUNK):
            out += self.inside(table[start:start + _CHUNK]).sum(axis=0)
        return out

    def answers(self, table: np.ndarray) -> np.ndarray:
        return self.counts(table) / len(table)

    def changes(self, old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every halfspace once, step +1 (the row enters it), −1 (leaves) or 0."""
        steps = self.inside(new).astype(np.int32) - self.inside(old)
        return np.broadcast_to(np.arange(self.cells), steps.shape), steps


class QuerySet:
    """Several query sets answered as one vector (their entries one after another)."""

    def __init__(self, parts: Sequence[Marginals | Intervals | Halfspaces]) -> None:
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
                        synthetic: np.ndarray, *, numeric: Sequence[int] = ()) -> np.ndarray:
    """(workloads,) largest absolute error of each workload's normalised answers on
    ``synthetic`` against ``data``, one workload at a time (memory: one marginal)."""
    out = np.empty(len(workloads))
    for i, w in enumerate(workloads):
        one = query_set(sizes, [w], numeric=numeric)
        out[i] = np.abs(one.answers(data) - one.answers(synthetic)).max()
    return out
