"""The genetic algorithm of Private-GSD as operators and an objective for the engine's
``PopulationSearch``: one-cell mutation and crossover of a synthetic table, and a fitness
scored incrementally from each child's parent.

A child differs from its parent in one cell (row r, column c). Its marginal counts are the
parent's with the old row's cell moved to the new row's cell in every workload containing c
(workloads without c keep their cell, so they are untouched: a sparse delta of at most two
cells per such workload; interval workloads change in at most two rows of intervals,
halfspaces in those the row enters or leaves); its loss
‖q(D′)/N′ − â‖² changes only in those entries (``changes`` of the query set). Children keep
their table and counts as a ``Patch`` of the parent's arrays, copied in full only if the child
becomes a parent itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bbzo.blackbox.zo.population import Brood, Child
from bbzo.privacy.gsd.queries import Halfspaces, Intervals, Marginals, QuerySet, is_marginal


class Patch:
    """An array equal to ``base`` except at ``index``, where it holds ``values`` (or, with
    ``add``, base plus the values summed per index). Made in O(changes); ``array()``
    copies the base once, on first use, and drops the reference to it."""

    __slots__ = ("_base", "_index", "_values", "_add", "_array")

    def __init__(self, base: np.ndarray, index: Any, values: Any, *, add: bool = False) -> None:
        self._base, self._index, self._values, self._add = base, index, values, add
        self._array: np.ndarray | None = None

    def array(self) -> np.ndarray:
        if self._array is None:
            out = self._base.copy()
            if self._add:
                np.add.at(out, self._index, self._values)
            else:
                out[self._index] = self._values
            self._array, self._base = out, None
        return self._array


def as_array(value: np.ndarray | Patch) -> np.ndarray:
    """The plain array of a candidate table or its statistics."""
    return value.array() if isinstance(value, Patch) else value


def code_dtype(sizes: Sequence[int]) -> np.dtype:
    """The smallest unsigned integer type holding codes below ``sizes`` (tables are copied
    whole when a child becomes a parent: small cells copy fast)."""
    return np.min_scalar_type(max(int(np.max(sizes)) - 1, 0))


def one_cell_mutation(sizes: Sequence[int]):
    """Batched mutation: each child is its parent table with one random cell redrawn uniformly
    from its column's domain; ``changes`` = (row, column, new code)."""
    sizes = np.asarray(sizes, dtype=np.int64)

    def mutate(parents: list[Any], rng: np.random.Generator) -> list[Child]:
        if not parents:
            return []
        tables = [as_array(p) for p in parents]
        n, m = tables[0].shape
        rows, cols = rng.integers(n, size=len(tables)), rng.integers(m, size=len(tables))
        codes = rng.integers(0, sizes[cols])
        return [Child(Patch(t, (r, c), v), i, (r, c, v))
                for i, (t, r, c, v) in enumerate(zip(tables, rows, cols, codes, strict=True))]

    return mutate


def one_cell_crossover(firsts: list[Any], seconds: list[Any],
                       rng: np.random.Generator) -> list[Child]:
    """Batched crossover: each child is the first parent with one random cell (r, c) set to
    column c of a random row of the second parent; ``changes`` = (row, column, new code)."""
    if not firsts:
        return []
    a = [as_array(p) for p in firsts]
    b = [as_array(p) for p in seconds]
    n, m = a[0].shape
    k = len(a)
    rows, cols, donors = rng.integers(n, size=k), rng.integers(m, size=k), rng.integers(n, size=k)
    return [Child(Patch(t, (r, c), s[d, c]), i, (r, c, s[d, c]))
            for i, (t, s, r, c, d) in enumerate(zip(a, b, rows, cols, donors, strict=True))]


class QueryFitness:
    """Batched objective over a ``Brood`` of synthetic tables (N′, m): the squared ℓ2 distance
    ‖counts/N′ − target‖² of their answers to ``target`` (cells,), the noisy answers, for a
    query set (``Marginals``, ``Intervals``, ``Halfspaces`` or a ``QuerySet`` of them).

    ``Child.stats`` holds each candidate's counts (cells,) int32; a child with a parent and
    ``changes`` is scored from its parent's counts and loss (see the module docstring), any
    other candidate by a full count. ``rows_counted`` tallies the table rows read.
    """

    def __init__(self, queries: Marginals | Intervals | Halfspaces | QuerySet,
                 target: np.ndarray, rows: int) -> None:
        self.queries = queries
        self.target = np.asarray(target, dtype=np.float64)
        self.rows = rows
        self.rows_counted = 0

    def full(self, child: Child) -> float:
        """Count ``child``'s table from scratch; its loss."""
        table = as_array(child.value)
        counts = self.queries.counts(table).astype(np.int32)
        child.stats = counts
        self.rows_counted += len(table)
        return float(np.sum((counts / self.rows - self.target) ** 2))

    def __call__(self, brood: Brood) -> np.ndarray:
        losses = np.empty(len(brood.children))
        known = [i for i, c in enumerate(brood.children)
                 if c.parent is not None and c.changes is not None]
        for i, child in enumerate(brood.children):
            if child.parent is None or child.changes is None:
                losses[i] = self.full(child)
        by_parent: dict[int, list[int]] = {}  # children of one parent record, by identity
        for i in known:
            by_parent.setdefault(id(brood.parents[brood.children[i].parent]), []).append(i)
        h = 1.0 / self.rows
        for group in by_parent.values():
            parent = brood.parents[brood.children[group[0]].parent]
            table, counts = as_array(parent.value), as_array(parent.stats)
            changes = np.array([brood.children[i].changes for i in group], dtype=np.int64)
            old = table[changes[:, 0]].astype(np.int64)
            new = old.copy()
            new[np.arange(len(group)), changes[:, 1]] = changes[:, 2]
            index, steps = self.queries.changes(old, new)
            # an entry repeats only with step 0, so each changed entry counts once:
            # (r + h·s)² − r² = 2·h·s·r + h²·s²
            residual = counts[index] * h - self.target[index]
            delta = (2.0 * h * steps * residual + (h * steps) ** 2).sum(axis=1)
            self.rows_counted += 2 * len(group)
            for j, i in enumerate(group):
                brood.children[i].stats = Patch(counts, index[j], steps[j], add=True)
                losses[i] = parent.loss + delta[j]
        return losses


def marginal_start(sizes: Sequence[int], measured: dict[tuple[int, ...], np.ndarray],
                   rows: int, rng: np.random.Generator, *, table: np.ndarray | None = None,
                   columns: Sequence[int] | None = None) -> np.ndarray:
    """A starting table (rows, m) whose columns are drawn independently from the 1-way
    marginals implied by the noisy marginal answers (each workload's answers summed over its other
    columns, averaged over the workloads containing the column with weights inverse to the
    cells summed (noise variance), negatives clipped; uniform
    for a column no workload contains). Post-processing of private answers only.

    With ``table`` and ``columns``: a copy of ``table`` with only those columns redrawn (the
    warm start of an adaptive round whose answers first cover them)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if table is None:
        table = np.empty((rows, len(sizes)), dtype=code_dtype(sizes))
    else:
        table = table.copy()
    for j in range(len(sizes)) if columns is None else columns:
        size = int(sizes[j])
        parts, weights = [], []
        for w, answers in measured.items():
            if is_marginal(w) and j in w:
                shape = tuple(int(sizes[c]) for c in w)
                axes = tuple(i for i, c in enumerate(w) if c != j)
                parts.append(answers.reshape(shape).sum(axis=axes))
                weights.append(size / answers.size)  # noise variance ∝ cells summed
        p = np.clip(np.average(parts, axis=0, weights=weights), 0.0, None) if parts \
            else np.ones(size)
        p = p / p.sum() if p.sum() > 0 else np.full(size, 1.0 / size)
        table[:, j] = rng.choice(size, size=rows, p=p)
    return table


def covered_columns(measured: dict[tuple[int, ...], np.ndarray]) -> set[int]:
    """Columns some measured marginal workload contains."""
    return {int(c) for w in measured if is_marginal(w) for c in w}
