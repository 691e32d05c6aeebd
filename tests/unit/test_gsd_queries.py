"""Marginal workloads (cells, counts, sensitivity) and the two mechanisms (noise of the stated
σ, Gumbel top-K selection, ledger charged before any draw)."""

import math
from itertools import product

import numpy as np
import pytest

from bbzo.errors import InputError, PrivacyBudgetExceeded
from bbzo.privacy.gsd.accounting import PrivacyLedger, gaussian_sigma
from bbzo.privacy.gsd.mechanisms import gaussian_measure, gumbel_top_k
from bbzo.privacy.gsd.queries import (
    HALFSPACE_BLOCK,
    Halfspace,
    Halfspaces,
    Marginals,
    Prefix,
    Range,
    class_workloads,
    marginal_sensitivity,
    parse_query_classes,
    query_set,
    sensitivity,
    workload_max_errors,
)

SIZES = np.array([3, 2, 4])


def brute_counts(table, workload):
    shape = SIZES[list(workload)]
    return np.array([np.sum(np.all(table[:, list(workload)] == cell, axis=1))
                     for cell in product(*(range(s) for s in shape))])


def test_marginal_counts_match_brute_force():
    table = np.random.default_rng(0).integers(0, SIZES, (50, 3))
    workloads = class_workloads(3, "2way") + class_workloads(3, "3way")
    m = Marginals(SIZES, workloads)
    counts = m.counts(table)
    assert m.cells == 3 * 2 + 3 * 4 + 2 * 4 + 24
    for w, part in zip(workloads, m.slices, strict=True):
        np.testing.assert_array_equal(counts[part], brute_counts(table, w))
    answers = m.answers(table)
    np.testing.assert_allclose([answers[s].sum() for s in m.slices], 1.0)


def largest_replace_one_gap(queries, table, draws, seed):
    """Largest ℓ2 change of the answers over ``draws`` random replace-one neighbours."""
    rng = np.random.default_rng(seed)
    gaps = []
    for _ in range(draws):
        other = table.copy()
        other[rng.integers(len(table))] = rng.integers(0, SIZES)
        gaps.append(np.linalg.norm(queries.answers(table) - queries.answers(other)))
    return max(gaps)


def test_replace_one_sensitivity_bound_is_attained_and_never_exceeded():
    workloads = class_workloads(3, "2way")
    m = Marginals(SIZES, workloads)
    table = np.random.default_rng(1).integers(0, SIZES, (40, 3))
    bound = marginal_sensitivity(40, len(workloads))
    gap = largest_replace_one_gap(m, table, 200, seed=1)
    assert gap <= bound + 1e-12
    assert gap == pytest.approx(bound)  # a row changing every column moves every marginal
    assert marginal_sensitivity(40) == pytest.approx(math.sqrt(2) / 40)


def assert_changes_match_recount(q, table, rng, rows=30):
    """Each row's ``changes`` applied to the counts equals a full recount after the change."""
    counts = q.counts(table)
    old = table[:rows]
    new = old.copy()
    cols = rng.integers(0, table.shape[1], rows)
    new[np.arange(rows), cols] = rng.integers(0, SIZES[cols])
    index, steps = q.changes(old, new)
    for k in range(rows):
        changed = table.copy()
        changed[k] = new[k]
        moved = counts.copy()
        np.add.at(moved, index[k], steps[k])
        np.testing.assert_array_equal(moved, q.counts(changed))
        nonzero = index[k][steps[k] != 0]
        assert len(set(nonzero.tolist())) == len(nonzero)


def test_prefix_counts_changes_and_sensitivity():
    rng = np.random.default_rng(5)
    workloads = class_workloads(3, "prefix")
    assert workloads == [Prefix(a, j) for a, j in [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0),
                                                   (2, 1)]]
    assert Prefix(0, 1) != (0, 1) and (0, 1) != Prefix(0, 1)
    assert len({(0, 1): 1, Prefix(0, 1): 2}) == 2
    q = query_set(SIZES, workloads)
    table = rng.integers(0, SIZES, (60, 3))
    counts = q.counts(table)
    for (a, j), part in zip(workloads, q.slices, strict=True):
        brute = [np.sum((table[:, a] == c) & (table[:, j] <= t))
                 for c in range(SIZES[a]) for t in range(SIZES[j])]
        np.testing.assert_array_equal(counts[part], brute)
    assert_changes_match_recount(q, table, rng, rows=40)
    assert sensitivity(Prefix(0, 2), SIZES, 60) == pytest.approx(math.sqrt(8) / 60)
    assert sensitivity((0, 2), SIZES, 60) == pytest.approx(math.sqrt(2) / 60)


def test_prefix_sensitivity_bound_is_attained_and_never_exceeded():
    q = query_set(SIZES, [Prefix(1, 2)])
    table = np.random.default_rng(6).integers(0, SIZES, (30, 3))
    bound = sensitivity(Prefix(1, 2), SIZES, 30)
    assert largest_replace_one_gap(q, table, 300, seed=6) <= bound + 1e-12
    other = table.copy()
    other[0] = [0, 1 - table[0, 1], 0]  # other category, lowest threshold: 2·B_j entries move
    old_row = table[0].copy()
    table[0] = [0, old_row[1], 0]
    assert np.linalg.norm(q.answers(table) - q.answers(other)) == pytest.approx(bound)


def test_range_counts_changes_and_sensitivity():
    rng = np.random.default_rng(7)
    workloads = class_workloads(3, "range", numeric=[2])
    assert workloads == [Range(-1, 2), Range(0, 2), Range(1, 2)]
    assert Range(0, 2) != Prefix(0, 2) and Range(0, 2) != (0, 2)
    with pytest.raises(InputError, match="numeric column"):
        class_workloads(3, "range", numeric=[])
    q = query_set(SIZES, workloads)
    table = rng.integers(0, SIZES, (60, 3))
    counts = q.counts(table)
    intervals = [(lo, hi) for lo in range(4) for hi in range(lo, 4)]
    for (a, j), part in zip(workloads, q.slices, strict=True):
        cats = range(SIZES[a]) if a >= 0 else [None]
        brute = [np.sum(((table[:, a] == c) if c is not None else True)
                        & (table[:, j] >= lo) & (table[:, j] <= hi))
                 for c in cats for lo, hi in intervals]
        np.testing.assert_array_equal(counts[part], brute)
    assert_changes_match_recount(q, table, rng)
    # bin 1 or 2 of 4 lies in (b+1)(4−b) = 6 intervals: √(2·6)/N
    assert sensitivity(Range(0, 2), SIZES, 60) == pytest.approx(math.sqrt(12) / 60)
    one = query_set(SIZES, [Range(0, 2)])
    bound = sensitivity(Range(0, 2), SIZES, 30)
    small = table[:30].copy()
    assert largest_replace_one_gap(one, small, 300, seed=7) <= bound + 1e-12
    other = small.copy()
    small[0], other[0] = [0, 0, 1], [1, 0, 2]  # other category, both bins in 6 intervals
    assert np.linalg.norm(one.answers(small) - one.answers(other)) == pytest.approx(bound)


def test_halfspace_queries_follow_the_documented_feature_map():
    rng = np.random.default_rng(8)
    workloads = class_workloads(3, "halfspace", seed=4, halfspaces=2)
    assert workloads == [Halfspace(4, 0), Halfspace(4, 1)]
    q = Halfspaces(SIZES, workloads, numeric=[2])
    table = rng.integers(0, SIZES, (50, 3))
    # φ: one-hot of columns 0 and 1 (3 + 2 features), column 2 as (code + 0.5)/4
    phi = np.concatenate([np.eye(3)[table[:, 0]], np.eye(2)[table[:, 1]],
                          ((table[:, 2] + 0.5) / 4)[:, None]], axis=1)
    expected = []
    for block in range(2):
        draw = np.random.default_rng([4, block])
        w = draw.normal(size=(HALFSPACE_BLOCK, 6))
        b = draw.normal(0.0, math.sqrt(3), HALFSPACE_BLOCK)
        expected.append((phi @ w.T >= b).sum(axis=0))
    counts = q.counts(table)
    assert np.abs(counts - np.concatenate(expected)).sum() <= 2  # float ties at the threshold
    assert 0 < counts.mean() < 50  # the thresholds split the rows
    assert_changes_match_recount(q, table, rng)
    assert sensitivity(Halfspace(4, 0), SIZES, 50) == pytest.approx(math.sqrt(100) / 50)
    one = query_set(SIZES, [Halfspace(4, 1)])
    gap = largest_replace_one_gap(one, table, 300, seed=8)
    assert 0 < gap <= sensitivity(Halfspace(4, 1), SIZES, 50) + 1e-12


def test_query_classes_and_workload_errors():
    assert parse_query_classes("2way, 3way,2way") == ("2way", "3way")
    assert parse_query_classes("prefix") == ("prefix",)
    with pytest.raises(InputError, match="unknown query class '4way'"):
        parse_query_classes("2way,4way")
    with pytest.raises(InputError, match="at least 3 columns"):
        class_workloads(2, "3way")
    a = np.zeros((4, 3), dtype=np.int64)
    b = a.copy()
    b[0] = [2, 1, 3]
    np.testing.assert_allclose(workload_max_errors(SIZES, [(0, 1), (2,)], a, b), [0.25, 0.25])


def test_gaussian_noise_has_the_stated_sigma_and_is_charged_first(tmp_path):
    rho, sens = 0.05, math.sqrt(2) / 100
    sigma = gaussian_sigma(rho, sens)
    ledger = PrivacyLedger(1.0)
    answers = np.full(20000, 0.3)
    noisy = gaussian_measure(answers, sensitivity=sens, rho=rho, ledger=ledger, workload="a,b",
                             rng=np.random.default_rng(2))
    noise = noisy - answers
    # mean within 5 standard errors; sample sd within 5 standard errors of σ (se ≈ σ/√(2n))
    assert abs(noise.mean()) < 5 * sigma / math.sqrt(noise.size)
    assert abs(noise.std() - sigma) < 5 * sigma / math.sqrt(2 * noise.size)
    assert ledger.charges[0].sigma == pytest.approx(sigma)
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    with pytest.raises(PrivacyBudgetExceeded):
        gaussian_measure(answers, sensitivity=sens, rho=2.0, ledger=ledger, workload="c",
                         rng=rng)
    assert rng.bit_generator.state == state  # refused before any noise was drawn
    assert len(ledger.charges) == 1


def test_gumbel_top_k_selects_clear_winners_and_charges_once():
    ledger = PrivacyLedger(10.0)
    scores = np.zeros(50)
    scores[[7, 31, 12]] = 1.0
    picked = gumbel_top_k(scores, 3, sensitivity=1e-3, rho=1.0, ledger=ledger,
                          workload="round 1", rng=np.random.default_rng(4))
    assert sorted(picked) == [7, 12, 31]
    assert [c.mechanism for c in ledger.charges] == ["exponential"]
    assert ledger.spent == pytest.approx(1.0)
    # with almost no budget the choice is close to uniform: the winners are rarely all picked
    hits = sum(set(gumbel_top_k(scores, 3, sensitivity=1.0, rho=1e-4, ledger=PrivacyLedger(1),
                                workload="r", rng=np.random.default_rng(s))) == {7, 12, 31}
               for s in range(50))
    assert hits < 5
    with pytest.raises(InputError, match="cannot select"):
        gumbel_top_k(scores, 51, sensitivity=1.0, rho=0.1, ledger=ledger, workload="r",
                      rng=np.random.default_rng(0))
