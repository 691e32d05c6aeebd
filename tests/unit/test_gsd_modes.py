"""PrivateGSD's modes and run folder: hybrid's ledger, one-shot subsets of a class too large to
measure whole, range and halfspace noise of the stated σ, parquet/DataFrame input, and a killed
fit resumed without measuring (or charging) twice."""

import json
import math
import sys

import numpy as np
import pytest

import bbzo.privacy.gsd.synthesizer as synthesizer
from bbzo.blackbox.zo.population import Brood
from bbzo.errors import InputError
from bbzo.privacy.gsd.accounting import LEDGER_FILE
from bbzo.privacy.gsd.checkpoint import load_stage
from bbzo.privacy.gsd.domain import Domain
from bbzo.privacy.gsd.ga import (
    QueryFitness,
    as_array,
    covered_columns,
    marginal_start,
    one_cell_crossover,
    one_cell_mutation,
)
from bbzo.privacy.gsd.queries import (
    Halfspace,
    Range,
    class_workloads,
    query_set,
    workload_label,
)
from bbzo.privacy.gsd.synthesizer import PrivateGSD
from bbzo.runs import RunFolder

SIZES = {"a": 3, "b": 2, "c": 4, "d": 3}
RICH = {"columns": {"c": {"type": "categorical", "categories": ["x", "y", "z"]},
                    "x": {"type": "numeric", "min": 0, "max": 10, "bins": 4},
                    "y": {"type": "numeric", "bins": [0, 1, 5, 10]}}}


def codes_table(rows=200, seed=0):
    rng = np.random.default_rng(seed)
    return {c: rng.integers(0, s, rows) for c, s in SIZES.items()}


def rich_table(rows=300, seed=0):
    rng = np.random.default_rng(seed)
    return {"c": rng.choice(["x", "y", "z"], rows), "x": rng.uniform(0, 10, rows),
            "y": rng.uniform(0, 10, rows)}


def test_incremental_fitness_equals_a_full_count_for_range_and_halfspaces():
    rng = np.random.default_rng(2)
    sizes = np.array([3, 4, 5])
    q = query_set(sizes, [(0, 1), Range(-1, 1), Range(0, 2), Halfspace(1, 0), Halfspace(1, 1)],
                  numeric=[1, 2])
    target = q.answers(rng.integers(0, sizes, (200, 3)))
    fitness = QueryFitness(q, target, 30)
    parent = synthesizer.Child(rng.integers(0, sizes, (30, 3)))
    parent.loss = fitness.full(parent)
    kids = one_cell_mutation(sizes)([parent.value] * 40, rng)
    kids += one_cell_crossover([parent.value] * 40, [rng.integers(0, sizes, (30, 3))] * 40, rng)
    losses = fitness(Brood(kids, [parent] * 40))
    for kid, loss in zip(kids, losses, strict=True):
        table = as_array(kid.value)
        np.testing.assert_array_equal(as_array(kid.stats), q.counts(table))
        assert loss == pytest.approx(np.sum((q.answers(table) - target) ** 2), abs=1e-12)


def test_adaptive_warm_start_redraws_only_newly_covered_columns():
    table = np.zeros((4000, 3), dtype=np.uint8)
    measured = {(1, 2): np.array([0.1, 0.0, 0.2, 0.7, 0.0, 0.0]), Range(-1, 0): np.ones(6)}
    assert covered_columns(measured) == {1, 2}
    out = marginal_start([3, 2, 3], measured, 4000, np.random.default_rng(0), table=table,
                         columns=[1])
    assert (table == 0).all() and (out[:, [0, 2]] == 0).all()  # a copy; other columns kept
    np.testing.assert_allclose(np.bincount(out[:, 1], minlength=2) / 4000, [0.3, 0.7],
                               atol=0.03)


def test_hybrid_spends_its_split_and_never_more_than_the_budget():
    gsd = PrivateGSD(1.0, queries="2way,3way", mode="hybrid", rows=40, generations=300,
                     rounds=2, top_k=1, oneshot_share=0.6, select_share=0.2, seed=1)
    gsd.fit(codes_table(), SIZES)
    rho, charges = gsd.summary_["rho"], gsd.ledger_.charges
    oneshot = [c for c in charges[:10]]
    assert [c.workload for c in oneshot[:4]] == ["a", "b", "c", "d"]  # 1-way, then 2-way
    assert sum(c.rho for c in oneshot) == pytest.approx(0.6 * rho)
    rounds = charges[10:]
    assert [c.mechanism for c in rounds] == ["exponential", "gaussian"] * 2
    assert rounds[0].rho == pytest.approx(0.4 * rho / 2 * 0.2)
    assert all(len(c.workload.split(",")) == 3 for c in rounds[1::2])
    assert gsd.ledger_.spent == pytest.approx(rho) and gsd.ledger_.spent <= rho * (1 + 1e-12)
    assert gsd.summary_["rho_by_mechanism"]["exponential"] == pytest.approx(0.4 * rho * 0.2)
    with pytest.raises(InputError, match="hybrid mode needs"):
        PrivateGSD(1.0, queries="1way", mode="hybrid").fit(codes_table(), SIZES)


def test_oneshot_measures_a_public_random_subset_of_a_class_too_large(monkeypatch):
    monkeypatch.setattr(synthesizer, "ONESHOT_CELLS", 60)  # 3-way cells: 24, 18, 36, 24
    picks = []
    for seed in (0, 1):
        gsd = PrivateGSD(1.0, queries="3way", rows=30, generations=50, seed=3)
        gsd.fit(codes_table(seed=seed), SIZES)
        selection = gsd.summary_["workload_selection"]["3way"]
        assert selection["of"] == 4 and selection["measured"] == len(gsd.ledger_.charges) < 4
        assert "public seed" in selection["how"]
        picks.append([c.workload for c in gsd.ledger_.charges])
        assert sum(c.rho for c in gsd.ledger_.charges) == pytest.approx(gsd.summary_["rho"])
    assert picks[0] == picks[1]  # the subset does not depend on the data
    capped = PrivateGSD(1.0, queries="2way", rows=30, generations=50, max_workloads=2)
    assert len(capped.fit(codes_table(), SIZES).ledger_.charges) == 2


def test_adaptive_default_k_fits_the_smallest_workloads_and_rounds_stay_within_cells(
        monkeypatch):
    monkeypatch.setattr(synthesizer, "FIT_CELLS", 80)  # 3-way cells: 24, 18, 36, 24
    gsd = PrivateGSD(1.0, queries="3way", mode="adaptive", rounds=2, rows=30, generations=60)
    gsd.fit(codes_table(), SIZES)
    note = gsd.summary_["workload_selection"]["adaptive"]
    assert (note["rounds"], note["top_k"], note["of"]) == (2, 1, 4)  # 18 + 24 + 24 ≤ 80 → 3 // 2
    measured = [c.workload for c in gsd.ledger_.charges if c.mechanism == "gaussian"]
    sizes = {"a,b,c": 24, "a,b,d": 18, "a,c,d": 36, "b,c,d": 24}
    assert len(measured) == 2 and sum(sizes[w] for w in measured) <= 80
    with pytest.raises(InputError, match="measure at least 102 cells, more than 80"):
        PrivateGSD(1.0, queries="3way", mode="adaptive", top_k=4, rounds=1).check(
            codes_table(), SIZES)


def test_range_and_halfspace_noise_has_the_stated_sigma(tmp_path):
    data = rich_table(rows=300)
    run = RunFolder(tmp_path / "run")
    gsd = PrivateGSD(1.0, queries="range,halfspace", rows=20, generations=1, seed=2)
    gsd.fit(data, RICH, run=run)
    domain = Domain.from_dict(RICH)
    codes = domain.encode(data)
    measured = load_stage(run).measured
    charges = {c.workload: c for c in gsd.ledger_.charges}
    expected = {Range(-1, 1): 2 * 6, Range(0, 1): 2 * 6, Range(-1, 2): 2 * 4,
                Range(0, 2): 2 * 4, Halfspace(2, 0): 100}  # ‖Δ‖² · N², by hand
    z = []
    for w, answers in measured.items():
        charge = charges[workload_label(w, domain.names)]
        if w in expected:
            assert charge.sigma == pytest.approx(math.sqrt(expected[w]) / 300
                                                 / math.sqrt(2 * charge.rho))
        truth = query_set(domain.sizes, [w], numeric=[1, 2]).answers(codes)
        z.append((answers - truth) / charge.sigma)
    z = np.concatenate(z)
    assert len(measured) == 4 + 10 and z.size == 10 + 30 + 6 + 18 + 1000
    assert np.std(z) == pytest.approx(1.0, abs=0.08) and abs(np.mean(z)) < 0.1
    assert set(json.loads((run.path / LEDGER_FILE).read_text().splitlines()[0])) >= {"sigma"}


def test_parquet_and_dataframe_input_match_csv(tmp_path, monkeypatch):
    pd = pytest.importorskip("pandas")
    domain = Domain.from_dict(RICH)
    frame = pd.DataFrame(rich_table(rows=40))
    csv = tmp_path / "t.csv"
    frame.to_csv(csv, index=False)
    expected = domain.encode(str(csv))
    np.testing.assert_array_equal(domain.encode(frame), expected)
    bad = frame.copy()
    bad.loc[7, "x"] = 11.0
    with pytest.raises(InputError, match="column 'x', data row 8: value 11.0"):
        domain.encode(bad)
    parquet = tmp_path / "t.parquet"
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(InputError, match="pip install pyarrow"):
        domain.encode(parquet)
    monkeypatch.undo()
    pytest.importorskip("pyarrow")
    frame.to_parquet(parquet)
    np.testing.assert_array_equal(domain.encode(parquet), expected)
    bad.to_parquet(parquet)
    with pytest.raises(InputError, match="column 'x', data row 8"):
        domain.encode(parquet)


class Killed(Exception):
    pass


def test_a_killed_fit_resumes_without_measuring_or_charging_twice(tmp_path, monkeypatch):
    settings = dict(queries="2way,3way", mode="hybrid", rows=30, generations=150, rounds=2,
                    top_k=1, patience=10_000, checkpoint_every=10, seed=3)
    data = codes_table()
    whole = PrivateGSD(1.0, **settings).fit(data, SIZES, run=RunFolder(tmp_path / "whole"))

    save = synthesizer.save_checkpoint

    def save_then_die(run, state):  # killed right after stage 2's checkpoint at generation 20
        save(run, state)
        if state["stage"] == 1 and state["used"] == 20:
            raise Killed

    killed = RunFolder(tmp_path / "killed")
    monkeypatch.setattr(synthesizer, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        PrivateGSD(1.0, **settings).fit(data, SIZES, run=killed)
    monkeypatch.undo()
    assert len(killed.read_jsonl(LEDGER_FILE)) == 10 + 2  # stages 1 and 2 measured
    measures = []
    original = synthesizer.gaussian_measure

    def counting(answers, **kw):
        measures.append(kw["workload"])
        return original(answers, **kw)

    monkeypatch.setattr(synthesizer, "gaussian_measure", counting)
    again = RunFolder(tmp_path / "killed", resume=True)
    resumed = PrivateGSD(1.0, **settings).fit(data, SIZES, run=again, resume=True)
    assert len(measures) == 1  # only stage 3's workload: nothing measured twice
    ledger = again.read_jsonl(LEDGER_FILE)
    assert ledger == RunFolder(tmp_path / "whole", resume=True).read_jsonl(LEDGER_FILE)
    assert sum(r["rho"] for r in ledger) == pytest.approx(resumed.summary_["rho"])
    assert resumed.ledger_.spent <= resumed.summary_["rho"] * (1 + 1e-12)
    np.testing.assert_array_equal(resumed.synthetic_, whole.synthetic_)
    assert resumed.summary_["generations"] == whole.summary_["generations"]
    done = PrivateGSD(1.0, **settings).fit(data, SIZES, run=again, resume=True)
    assert len(measures) == 1 and len(again.read_jsonl(LEDGER_FILE)) == len(ledger)
    np.testing.assert_array_equal(done.synthetic_, whole.synthetic_)


def test_class_workloads_of_a_rich_domain():
    gsd = PrivateGSD(1.0, queries="range,halfspace", halfspaces=3, seed=5)
    domain = Domain.from_dict(RICH)
    assert gsd.workloads_of(domain, "range") == [Range(-1, 1), Range(0, 1), Range(-1, 2),
                                                 Range(0, 2)]
    assert gsd.workloads_of(domain, "halfspace") == class_workloads(3, "halfspace", seed=5,
                                                                    halfspaces=3)
    with pytest.raises(InputError, match="numeric column"):
        PrivateGSD(1.0, queries="range").fit(codes_table(), SIZES)
