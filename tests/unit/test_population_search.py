"""PopulationSearch: batched operators with Child records, incremental fitness on a marginal
toy (exact against a full recount, and convergence), lazy feasibility on improvers only, the
stop predicate, the partial last generation under a budget, selection strategies, resume."""

import pickle

import numpy as np
import pytest
from marginal_toy import MarginalFitness, PairMarginals, planted_table

from bbzo.blackbox.budget import Budget
from bbzo.blackbox.zo.population import (
    Child,
    PopulationSearch,
    batched_mutation,
    elite_parents,
    initial_parents,
    population_minimize,
    resample_rows,
)
from bbzo.errors import InputError

SIZES = np.array([2, 3, 4, 5, 2, 3])


def toy(rows, sizes=SIZES, seed=0):
    """Pair marginals, the target counts of a planted table, and a uniform random start."""
    marginals = PairMarginals(sizes)
    target = marginals.counts(planted_table(rows, sizes, seed))
    start = np.random.default_rng(seed + 1).integers(0, sizes, (rows, len(sizes)))
    return marginals, target, start.astype(np.int8)


@pytest.mark.parametrize("rows_changed", [1, 3])
def test_incremental_counts_equal_a_full_recount_for_every_child(rows_changed):
    marginals, target, start = toy(2000)
    fitness = MarginalFitness(marginals, target)
    checked = []

    def checked_fitness(brood):
        losses = fitness(brood)
        for child, loss in zip(brood.children, losses, strict=True):
            full = marginals.counts(child.value)
            np.testing.assert_array_equal(child.stats, full)
            assert loss == np.abs(full - target).sum()
            if child.parent is not None:
                parent = brood.parents[child.parent].value
                changed = np.flatnonzero((child.value != parent).any(axis=1))
                assert set(changed) <= set(child.changes.tolist())
                checked.append(len(changed))
        return losses

    search = PopulationSearch([start], mutate=resample_rows(SIZES, rows=rows_changed),
                              elite_size=4, children=30, seed=0)
    population_minimize(checked_fitness, search, generations=6)
    assert len(checked) == 5 * 30 and sum(checked) > 100  # children with changed rows
    # Only generation 0 was counted in full; every child read its changed rows twice.
    assert fitness.rows_counted == 2000 + 5 * 30 * 2 * rows_changed


def test_ga_on_marginal_counts_converges():
    marginals, target, start = toy(150, SIZES[:4])
    first = int(np.abs(marginals.counts(start) - target).sum())
    search = PopulationSearch([start], mutate=resample_rows(SIZES[:4]), elite_size=5,
                              children=10, seed=0)
    result = population_minimize(MarginalFitness(marginals, target), search, generations=400)
    # Measured: the L1 distance falls from 732 to 64 (seed 0) in 400 generations.
    assert result.fun < 0.2 * first
    assert result.fun == np.abs(marginals.counts(result.x) - target).sum()


def counting_search(**kwargs):
    """Integers: a child is its parent plus a step in {-3, ..., 3}; loss = |x - 10|."""
    step = batched_mutation(lambda p, rng: p + int(rng.integers(-3, 4)))
    args = dict(mutate=step, elite_size=3, children=6, seed=0)
    args.update(kwargs)
    return PopulationSearch([0, 1, 2], **args)


def distance(brood):
    return [abs(x - 10) for x in brood]


@pytest.mark.parametrize("rule", ["best", "elite"])
def test_feasibility_is_checked_lazily_on_improvers_only(rule):
    calls, told = [], []  # told: the generations that had improvers

    def feasible(improvers):
        calls.append([c.value for c in improvers])
        return [c.value % 2 == 0 for c in improvers]

    search = counting_search(feasible=feasible, improvers=rule, key=lambda x: x,
                             init_losses=[10, 9, 8])
    for _ in range(12):
        bar = search.best[1] if rule == "best" else search.elite[-1][1]
        before = [value for value, _ in search.elite]
        brood = search.ask()
        losses = distance(brood)
        search.tell(brood, losses)
        improvers = list(dict.fromkeys(x for x, loss in zip(brood, losses, strict=True)
                                       if loss < bar))
        if improvers:
            assert calls.pop(0) == improvers  # one call, improvers only, no duplicates
            told.append(improvers)
        assert search.last["improvers"] == len(improvers)
        assert all(x % 2 == 0 for x, _ in search.elite if x not in before)
    assert calls == []  # never called with an empty list
    assert search.best[0] % 2 == 0 and search.best[1] == min(loss for _, loss in search.elite)
    assert len(told) >= 2  # not vacuous


def test_stop_predicate_ends_the_driver():
    search = counting_search(stop=lambda best: best.loss == 0)
    result = population_minimize(distance, search, generations=200)
    assert result.fun == 0 and result.x == 10 and result.nit < 200
    assert result.message == "stop condition met" and search.done


def test_partial_last_generation_is_cut_to_the_budget():
    for total in (1, 7, 13, 20):
        budget = Budget(max_queries=total)
        search = counting_search(init_losses=[10, 9, 8], partial=True)
        result = population_minimize(distance, search, budget=budget)
        assert result.nqueries == budget.queries == total
        assert [h["children"] for h in result.history] == [6] * (total // 6) + (
            [total % 6] if total % 6 else [])
        assert sum(h["dropped"] for h in result.history) == -total % 6


def test_selection_strategies():
    parents = []
    record = batched_mutation(lambda p, rng: parents.append(p) or p + 1)
    search = counting_search(mutate=record, select=initial_parents)
    population_minimize(distance, search, generations=4)
    assert parents == [0, 1, 2, 0, 1, 2, 0, 1, 2] and search.best[0] == 3
    parents.clear()
    search = counting_search(mutate=record, select=elite_parents)
    population_minimize(distance, search, generations=3)
    # the elite, best first; a child tying an elite member ranks after it
    assert parents == [2, 1, 0, 3, 2, 2]


def test_state_dict_with_stats_continues_identically():
    marginals, target, start = toy(200)

    def make():
        return PopulationSearch([start], mutate=resample_rows(SIZES, per_parent=2),
                                elite_size=3, children=12, select=elite_parents,
                                crossover=None, seed=3)

    whole = population_minimize(MarginalFitness(marginals, target), make(), generations=9)
    first = make()
    population_minimize(MarginalFitness(marginals, target), first, generations=4)
    pending = first.ask()
    blob = pickle.dumps(first.state_dict())
    first.tell(pending, MarginalFitness(marginals, target)(pending))
    resumed = make()
    resumed.load_state_dict(pickle.loads(blob))
    tail = population_minimize(MarginalFitness(marginals, target), resumed, generations=5)
    assert tail.fun == whole.fun and tail.history[-1]["best"] == whole.history[-1]["best"]
    np.testing.assert_array_equal(tail.x, whole.x)


def test_operator_contract_is_checked():
    bad_parent = lambda parents, rng: [Child(p, 7) for p in parents]  # noqa: E731
    with pytest.raises(InputError, match="parent indexes"):
        population_minimize(distance, counting_search(mutate=bad_parent), generations=2)
    twice = lambda parents, rng: [Child(p, 0) for p in parents * 2]  # noqa: E731
    with pytest.raises(InputError, match="more than"):
        population_minimize(distance, counting_search(mutate=twice), generations=2)
    with pytest.raises(InputError, match="one bool each"):
        population_minimize(distance, counting_search(feasible=lambda c: [True]),
                            generations=3)
    with pytest.raises(InputError, match="improvers must be one of"):
        counting_search(improvers="all")
    with pytest.raises(InputError, match="init_losses"):
        counting_search(init_losses=[1.0])


def test_crossover_pairs_are_distinct_elite_members_covering_every_ordered_pair():
    pairs = []

    def cross(firsts, seconds, rng):
        pairs.extend(zip(firsts, seconds, strict=True))
        return [Child(a, i) for i, a in enumerate(firsts)]

    search = counting_search(crossover=cross, crossover_rate=1.0, children=40,
                             init_losses=[1, 2, 3], elite_size=3)
    brood = search.ask()
    assert len(brood) == 40 and len(pairs) == 40
    assert all(a != b for a, b in pairs) and {a for a, _ in pairs} <= {0, 1, 2}
    assert len(set(pairs)) == 6  # all 3 x 2 ordered pairs of distinct members
