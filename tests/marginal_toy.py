"""A toy objective for incremental fitness: the 2-way marginal counts of an integer table.

A candidate is an (N, m) integer table; its statistics are the counts of every 2-way marginal
(all column pairs), one flat int64 vector; its loss is the L1 distance of those counts to a
target's. A child that differs from its parent in a few rows (``Child.changes``: their indices,
as ``resample_rows`` records them) gets its counts from the parent's by subtracting the old rows'
cells and adding the new rows' cells: a few additions instead of a pass over all N rows.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from bbzo.blackbox.zo.population import Brood, Child


def planted_table(rows: int, sizes: np.ndarray, seed: int) -> np.ndarray:
    """An (rows, m) int8 table whose columns copy column 0 (mod their size) half of the time:
    its 2-way marginals are far from those of independent uniform columns."""
    rng = np.random.default_rng(seed)
    table = rng.integers(0, sizes, (rows, len(sizes)))
    copy = rng.random(table.shape) < 0.5
    table = np.where(copy, table[:, :1] % sizes, table)
    return table.astype(np.int8)


class PairMarginals:
    """Counts of all 2-way marginals of tables with column domain sizes ``sizes`` (m,).

    Pair (a, b), a < b, owns ``sizes[a] * sizes[b]`` consecutive cells of the count vector;
    a row falls in cell ``offset + row[a] * sizes[b] + row[b]`` of each pair.
    """

    def __init__(self, sizes: np.ndarray) -> None:
        sizes = np.asarray(sizes, dtype=np.int64)
        pairs = np.array(list(combinations(range(len(sizes)), 2)))
        self.a, self.b = pairs[:, 0], pairs[:, 1]
        self.stride = sizes[self.b]
        widths = sizes[self.a] * sizes[self.b]
        self.offsets = np.concatenate([[0], np.cumsum(widths)[:-1]])
        self.cells = int(widths.sum())

    def cell_index(self, rows: np.ndarray) -> np.ndarray:
        """(k, pairs) flat cell indices of the k rows ``rows`` (k, m)."""
        rows = rows.astype(np.int64)
        return self.offsets + rows[:, self.a] * self.stride + rows[:, self.b]

    def counts(self, table: np.ndarray) -> np.ndarray:
        """(cells,) int64 counts of ``table`` (N, m), from all its rows."""
        return np.bincount(self.cell_index(table).ravel(), minlength=self.cells)


class MarginalFitness:
    """Batched objective over a ``Brood`` of tables: L1 distance of the pair counts to
    ``target`` (cells,), int64. Each child's counts are kept in ``Child.stats``; with
    ``incremental`` a child with a parent gets them from the parent's counts and the changed
    rows, else from a full recount. ``rows_counted`` tallies the table rows read."""

    def __init__(self, marginals: PairMarginals, target: np.ndarray, *,
                 incremental: bool = True) -> None:
        self.marginals, self.target, self.incremental = marginals, target, incremental
        self.rows_counted = 0

    def __call__(self, brood: Brood) -> np.ndarray:
        children = brood.children
        losses = np.zeros(len(children), dtype=np.int64)
        known = [i for i, c in enumerate(children) if self.incremental and c.parent is not None]
        if known:
            losses[known] = self._from_parents(brood, [children[i] for i in known])
        for i, child in enumerate(children):
            if child.stats is None:
                child.stats = self.marginals.counts(child.value)
                self.rows_counted += len(child.value)
                losses[i] = np.abs(child.stats - self.target).sum()
        return losses

    def _from_parents(self, brood: Brood, kids: list[Child]) -> np.ndarray:
        """Counts of ``kids`` (children with a parent) from their parents' counts and their
        changed rows, in a few vector operations (a parent record often has several children:
        its old rows are gathered in one go); sets their ``stats``; returns their losses."""
        cells = self.marginals.cells
        slots: dict[int, int] = {}  # id of a parent record -> its slot
        records: list[Child] = []
        for c in kids:
            record = brood.parents[c.parent]
            if slots.setdefault(id(record), len(records)) == len(records):
                records.append(record)
        slot = np.array([slots[id(brood.parents[c.parent])] for c in kids])
        index = np.concatenate([c.changes for c in kids])
        owner = np.repeat(np.arange(len(kids)), [len(c.changes) for c in kids])
        new = np.concatenate([c.value.take(c.changes, axis=0) for c in kids])
        old = np.empty_like(new)
        row_slot = slot[owner]
        for j, record in enumerate(records):
            rows = np.flatnonzero(row_slot == j)
            old[rows] = record.value.take(index[rows], axis=0)
        shift = (owner * cells)[:, None]
        size = len(kids) * cells
        delta = (np.bincount((shift + self.marginals.cell_index(new)).ravel(), minlength=size)
                 - np.bincount((shift + self.marginals.cell_index(old)).ravel(), minlength=size))
        counts = np.stack([r.stats for r in records])[slot] + delta.reshape(len(kids), cells)
        self.rows_counted += 2 * len(index)
        for child, row in zip(kids, counts, strict=True):
            child.stats = row
        return np.abs(counts - self.target).sum(axis=1)
