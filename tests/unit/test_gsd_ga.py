"""The GA on the engine's population search: incremental fitness equals a full recount,
operators change one cell, and PrivateGSD lowers the marginal error on a slice of adult."""

from pathlib import Path

import numpy as np
import pytest

from bbzo.blackbox.zo.population import Brood, Child, PopulationSearch, population_minimize
from bbzo.errors import InputError
from bbzo.privacy.gsd.domain import Domain, read_csv
from bbzo.privacy.gsd.ga import (
    Patch,
    QueryFitness,
    as_array,
    marginal_start,
    one_cell_crossover,
    one_cell_mutation,
)
from bbzo.privacy.gsd.queries import Marginals, class_workloads, query_set
from bbzo.privacy.gsd.synthesizer import PrivateGSD

ADULT = Path(__file__).resolve().parents[3] / "shared" / "data" / "adult"
SLICE = ["workclass", "education-num", "marital-status", "sex", "income>50K"]
SIZES = np.array([4, 3, 5, 2, 6])


def test_patch_copies_on_first_read_only():
    base = np.arange(5)
    p = Patch(base, [1, 3], [10, -1], add=True)
    np.testing.assert_array_equal(p.array(), [0, 11, 2, 2, 4])
    np.testing.assert_array_equal(base, np.arange(5))
    assert p.array() is p.array()
    np.testing.assert_array_equal(as_array(Patch(base, 0, 9)), [9, 1, 2, 3, 4])


def test_operators_change_one_cell_and_incremental_fitness_equals_full_count():
    rng = np.random.default_rng(0)
    m = query_set(SIZES, class_workloads(5, "2way") + class_workloads(5, "3way")
                  + class_workloads(5, "prefix"))
    target = m.answers(rng.integers(0, SIZES, (300, 5)))
    fitness = QueryFitness(m, target, 40)
    a, b = (Child(rng.integers(0, SIZES, (40, 5))) for _ in range(2))
    for parent in (a, b):
        parent.loss = fitness.full(parent)
    kids = one_cell_mutation(SIZES)([a.value] * 30, rng)
    kids += one_cell_crossover([b.value] * 30, [a.value] * 30, rng)
    for k in kids[30:]:
        k.parent += 30
    brood = Brood(kids, [a] * 30 + [b] * 30)
    losses = fitness(brood)
    for kid, loss in zip(kids, losses, strict=True):
        table = as_array(kid.value)
        parent = as_array(brood.parents[kid.parent].value)
        assert (table != parent).sum() <= 1
        assert (table < SIZES).all()
        np.testing.assert_array_equal(as_array(kid.stats), m.counts(table))
        assert loss == pytest.approx(np.sum((m.answers(table) - target) ** 2), abs=1e-12)
    assert fitness.rows_counted == 80 + 2 * 60


def test_population_search_with_incremental_fitness_matches_exact_loss():
    rng = np.random.default_rng(1)
    m = Marginals(SIZES, class_workloads(5, "2way"))
    target = m.answers(rng.integers(0, SIZES, (200, 5)) // 2)
    fitness = QueryFitness(m, target, 100)
    search = PopulationSearch([rng.integers(0, SIZES, (100, 5))], mutate=one_cell_mutation(SIZES),
                              crossover=one_cell_crossover, elite_size=5, children=40, seed=2)
    result = population_minimize(fitness, search, generations=400)
    best = as_array(result.x)
    assert result.fun == pytest.approx(np.sum((m.answers(best) - target) ** 2), rel=1e-9)
    assert result.fun < 0.5 * result.history[0]["best"]


def test_marginal_start_draws_columns_from_the_implied_one_way_marginals():
    rng = np.random.default_rng(3)
    data = np.stack([rng.choice(4, 5000, p=[0.7, 0.1, 0.1, 0.1]), rng.integers(0, 3, 5000),
                     rng.choice(5, 5000, p=[0.05, 0.05, 0.1, 0.1, 0.7]),
                     rng.integers(0, 2, 5000), rng.integers(0, 6, 5000)], axis=1)
    workloads = [(0, 1), (1, 2), (0, 2)]
    m = Marginals(SIZES, workloads)
    answers = m.answers(data)
    measured = {w: answers[part] for w, part in zip(workloads, m.slices, strict=True)}
    start = marginal_start(SIZES, measured, 4000, np.random.default_rng(4))
    assert start.shape == (4000, 5) and (start < SIZES).all()
    for j in (0, 1, 2):
        truth = np.bincount(data[:, j], minlength=SIZES[j]) / 5000
        np.testing.assert_allclose(np.bincount(start[:, j], minlength=SIZES[j]) / 4000, truth,
                                   atol=0.03)
    # columns 3 and 4 are in no workload: uniform
    np.testing.assert_allclose(np.bincount(start[:, 4], minlength=6) / 4000, 1 / 6, atol=0.03)


@pytest.fixture(scope="module")
def adult_slice():
    if not (ADULT / "adult.csv").is_file():
        pytest.skip(f"the adult data set is not at {ADULT} (../shared beside the checkout)")
    columns = read_csv(ADULT / "adult.csv")
    full = Domain.from_file(ADULT / "adult-domain.json")
    domain = Domain.from_dict({c: int(full.sizes[full.names.index(c)]) for c in SLICE})
    data = {c: columns[c][:2000] for c in SLICE}
    return data, domain


@pytest.mark.parametrize("mode", ["oneshot", "adaptive"])
def test_private_gsd_lowers_marginal_error_on_adult(adult_slice, mode):
    data, domain = adult_slice
    gsd = PrivateGSD(1.0, mode=mode, rows=200, generations=400, top_k=2, seed=0)
    gsd.fit(data, domain)
    m = Marginals(domain.sizes, class_workloads(len(domain), "2way"))
    truth = m.answers(domain.encode(data))
    start = np.random.default_rng(0).integers(0, domain.sizes, (200, len(domain)))
    before = np.abs(m.answers(start) - truth).max()
    after = np.abs(m.answers(gsd.synthetic_) - truth).max()
    assert after < 0.4 * before
    assert gsd.summary_["rho_spent"] == pytest.approx(gsd.summary_["rho"])
    assert gsd.summary_["delta"] == pytest.approx(1 / 2000 ** 2)
    again = PrivateGSD(1.0, mode=mode, rows=200, generations=400, top_k=2, seed=0)
    np.testing.assert_array_equal(again.fit(data, domain).synthetic_, gsd.synthetic_)
    sample = gsd.sample(10)
    assert list(sample) == SLICE and all(len(v) == 10 for v in sample.values())


def test_private_gsd_fits_marginals_and_prefix_queries_together(adult_slice):
    data, domain = adult_slice
    gsd = PrivateGSD(1.0, queries="2way,prefix", rows=200, generations=400, seed=0)
    gsd.fit(data, domain)
    codes = domain.encode(data)
    start = np.random.default_rng(0).integers(0, domain.sizes, (200, len(domain)))
    for name in ("2way", "prefix"):
        q = query_set(domain.sizes, class_workloads(len(domain), name))
        truth = q.answers(codes)
        assert np.abs(q.answers(gsd.synthetic_) - truth).max() \
            < 0.5 * np.abs(q.answers(start) - truth).max(), name
    labels = [c.workload for c in gsd.ledger_.charges]
    assert len(labels) == 10 + 20 and "prefix workclass,education-num<=t" in labels
    _, _, workloads = PrivateGSD(1.0, queries="2way,prefix", mode="adaptive").check(data,
                                                                                     domain)
    assert len(workloads) == 10 + 20  # every class may be selected adaptively


def test_private_gsd_checks_inputs_before_spending():
    with pytest.raises(InputError, match="epsilon"):
        PrivateGSD(0.0)
    with pytest.raises(InputError, match="delta"):
        PrivateGSD(1.0, delta=1.5)
    with pytest.raises(InputError, match="mode"):
        PrivateGSD(1.0, mode="bogus")
    with pytest.raises(InputError, match="call fit"):
        PrivateGSD(1.0).sample(3)
    with pytest.raises(InputError, match="cells"):
        PrivateGSD(1.0, queries="3way").fit({"a": [0], "b": [0], "c": [0]},
                                            {"a": 300, "b": 300, "c": 300})
    four = {c: [0] for c in "abcd"}
    with pytest.raises(InputError, match="measure at least 27,000,000 cells"):
        PrivateGSD(1.0, queries="3way", mode="adaptive", rounds=1, top_k=1).fit(
            four, {"a": 300, "b": 300, "c": 300, "d": 300})


def test_early_stopping_ends_a_stalled_fit(adult_slice):
    data, domain = adult_slice
    patient = PrivateGSD(1.0, rows=50, generations=3000, patience=20, tolerance=0.5, seed=1)
    assert patient.fit(data, domain).summary_["generations"] < 3000
    never = PrivateGSD(1.0, rows=50, generations=300, patience=5000, tolerance=0.5, seed=1)
    assert never.fit(data, domain).summary_["generations"] == 300
