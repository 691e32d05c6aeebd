"""CMA-ES through pycma: queries counted and budgeted by the engine, the budget never exceeded,
one clear line when ``cma`` is missing."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bbzo
from bbzo.blackbox.budget import Budget
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.ledger import Ledger
from bbzo.blackbox.query.objective import as_objective, cross_entropy
from bbzo.blackbox.targets.classifier import TorchClassifier
from bbzo.blackbox.zo.problems import quadratic, rosenbrock
from bbzo.errors import InputError

pytest.importorskip("cma", reason="CMA-ES needs the optional package cma (pip install cma)")


class Counted:
    """A batched sphere that records every batch size it is called with."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, X: np.ndarray) -> np.ndarray:
        self.batches.append(len(X))
        return ((X - 0.5) ** 2).sum(1)


@settings(max_examples=25, deadline=None)
@given(d=st.integers(2, 6), budget=st.integers(1, 120), popsize=st.integers(2, 12),
       method=st.sampled_from(["cma-es", "sep-cma-es"]))
def test_budget_is_never_exceeded(d, budget, popsize, method):
    fun = Counted()
    res = bbzo.minimize(fun, np.zeros(d), method=method, budget=budget,
                        options={"popsize": popsize})
    assert sum(fun.batches) == res.nqueries <= budget
    assert res.method == method and "budget" in res.message
    assert res.nqueries == budget  # the last population is cut to what the budget affords
    assert res.fun == pytest.approx(float(fun(res.x[None])[0]))


@pytest.mark.parametrize("method", ["cma-es", "sep-cma-es"])
def test_cma_converges_and_is_reproducible(method):
    p = quadratic(d=6, cond=100.0)
    a = bbzo.minimize(p.fun, p.x0, method=method, budget=3000, seed=1)
    b = bbzo.minimize(p.fun, p.x0, method=method, budget=3000, seed=1)
    assert a.fun < 1e-8 and a.fun == b.fun and a.history == b.history
    assert set(a.history[0]) == {"nit", "nqueries", "loss", "best", "lr"}


def test_cma_restarts_until_the_budget_is_spent():
    p = rosenbrock()
    res = bbzo.minimize(p.fun, p.x0, method="cma-es", budget=6000)
    assert res.fun < 1e-12 and res.nqueries == 6000  # pycma alone stops near 1,500


def test_cma_stops_on_target_maxiter_and_callback():
    fun = lambda X: (np.asarray(X) ** 2).sum(1)  # noqa: E731
    hit = bbzo.minimize(fun, np.ones(3), method="cma-es", target=1e-6, budget=10_000)
    assert hit.success and hit.fun <= 1e-6 and hit.nqueries < 10_000
    capped = bbzo.minimize(fun, np.ones(3), method="cma-es", maxiter=4)
    assert capped.nit == 4 and not capped.success and len(capped.history) == 4
    stopped = bbzo.minimize(fun, np.ones(3), method="cma-es", callback=lambda h: h["nit"] == 2)
    assert stopped.nit == 2 and stopped.message == "stopped by callback"


def test_cma_through_the_query_layer_spends_its_budget(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    layer = QueryLayer(TorchClassifier(model, "tiny", device="cpu"),
                       ledger=Ledger(tmp_path / "l.sqlite"), budget=Budget(max_queries=50))
    fun = as_objective(layer, reduce=cross_entropy(2), shape=(1, 4, 4))
    res = bbzo.minimize(fun, np.full(16, 0.5), method="cma-es", seed=0)
    assert res.nqueries <= 50 and layer.budget.queries == fun.nsent <= 50
    assert res.method == "cma-es" and "budget" in res.message


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="cma-es", q=4), "q set the ZO estimator"),
    (dict(method="cma-es", lr=0.1), "lr set the ZO estimator"),
    (dict(method="sep-cma-es", modules=[bbzo.blackbox.zo.antithetic()]), "modules"),
    (dict(method="cma-es", options={"sigma": 1.0}), "unknown option"),
    (dict(method="cma-es", options={"popsize": 1}), "popsize"),
    (dict(method="cma-es", options={"sigma0": -1.0}), "sigma0"),
    (dict(method="zo-sgd", options={"popsize": 8}), "options are settings of the CMA"),
])
def test_bad_cma_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        bbzo.minimize(lambda X: (X ** 2).sum(1), np.ones(3), budget=100, **kwargs)


def test_missing_cma_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "cma", None)  # import cma now raises ImportError
    fun = Counted()
    with pytest.raises(InputError) as err:
        bbzo.minimize(fun, np.ones(3), method="cma-es", budget=100)
    message = str(err.value)
    assert "\n" not in message and "pip install" in message and "cma" in message
    assert fun.batches == []  # refused before any query
