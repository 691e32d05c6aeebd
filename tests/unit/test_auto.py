"""method="auto": its choice in each regime, counted queries, and the rules behind defaults."""

from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest
import torch

import bbzo
from bbzo.blackbox.zo.auto import (
    FORWARD_MIN_D,
    FULL_COVARIANCE_MAX_D,
    NOISY_GENERATIONS,
    POWELL_MAX_D,
    choose_method,
    default_q,
    noisy_popsize,
)
from bbzo.blackbox.zo.problems import quadratic
from bbzo.blackbox.zo.step_size import SecantStep
from bbzo.blackbox.zo.transforms import Probe
from bbzo.errors import InputError


@pytest.mark.parametrize("d, budget, noisy, cma, expected", [
    (10, 4_000, False, True, "powell"),               # small, smooth: conjugate directions
    (POWELL_MAX_D, None, False, True, "powell"),
    (100, 20_000, False, True, "cma-es"),             # mid-size, smooth, budget >= d²
    (100, 5_000, False, True, "zo-sgd"),              # ... budget < d²
    (100, 20_000, False, False, "zo-sgd"),            # ... no cma
    (FULL_COVARIANCE_MAX_D, None, False, True, "cma-es"),
    (FULL_COVARIANCE_MAX_D + 1, None, False, True, "zo-sgd"),
    (1_000, 40_000, False, True, "zo-sgd"),
    (10_000, 100_000, False, True, "zo-sgd"),
    (10, 4_000, True, True, "cma-es"),                # noise: sampling, not differences
    (100, 20_000, True, True, "cma-es"),              # ... full covariance, budget >= d²
    (100, 5_000, True, True, "sep-cma-es"),           # ... budget < d²: separable
    (FULL_COVARIANCE_MAX_D, None, True, True, "cma-es"),
    (FULL_COVARIANCE_MAX_D, 40_000, True, True, "sep-cma-es"),
    (FULL_COVARIANCE_MAX_D + 1, None, True, True, "sep-cma-es"),
    (10_000, 20_000, True, True, "sep-cma-es"),
    (10, 4_000, True, False, "zo-sgd"),               # no cma: ZO-SGD
])
def test_choice_per_regime(d, budget, noisy, cma, expected):
    assert choose_method(d, budget, noisy, cma) == expected


def noisy_sphere(seed=0):
    rng = np.random.default_rng(seed)
    return lambda X: ((np.asarray(X) - 1.0) ** 2).sum(1) + 0.01 * rng.standard_normal(len(X))


def test_auto_detects_noise_and_counts_the_check():
    calls = []

    def fun(X):
        calls.append(len(X))
        return noisy_sphere()(X)

    res = bbzo.minimize(fun, np.zeros(4), method="auto", budget=600)
    assert res.method == ("cma-es" if importlib.util.find_spec("cma") else "zo-sgd")
    assert calls[0] == 2 and sum(calls) == res.nqueries <= 600  # the noise check is counted


@pytest.mark.parametrize("d, budget, popsize", [
    (10, None, 10), (10, 1_000, 10), (1_000, 40_000, 40_000 // NOISY_GENERATIONS),
    (10_000, 20_000, 66), (10_000, 5_000, 31),
])
def test_noisy_popsize(d, budget, popsize):
    assert noisy_popsize(d, budget) == popsize


@pytest.mark.skipif(importlib.util.find_spec("cma") is None, reason="needs the cma package")
def test_auto_on_noise_runs_cma_with_the_noisy_population():
    res = bbzo.minimize(noisy_sphere(), np.zeros(4), method="auto", budget=6_000)
    first_generation = res.history[0]["nqueries"] - 2  # after the noise check
    assert res.method == "cma-es" and first_generation == noisy_popsize(4, 5_998) == 19


@pytest.mark.parametrize("d, queries_per_step", [
    (FORWARD_MIN_D - 1, lambda q: 2 * q + 1),   # central differences and f(x)
    (FORWARD_MIN_D, lambda q: q + 1),           # forward differences (f(x) among them)
])
def test_auto_zo_sgd_takes_forward_differences_from_forward_min_d(d, queries_per_step):
    p = quadratic(d, cond=10.0, rotation="fast")
    res = bbzo.minimize(p.fun, p.x0, method="auto", budget=3_000)
    steps = np.diff([h["nqueries"] for h in res.history])[1:]  # after the line search
    assert res.method == "zo-sgd" and res.nqueries <= 3_000
    assert set(steps.tolist()) == {queries_per_step(default_q(d, 2_998))}


def test_auto_on_a_smooth_small_problem_runs_powell():
    p = quadratic(d=5, cond=100.0)
    res = bbzo.minimize(p.fun, p.x0, method="auto", budget=3000)
    assert res.method == "powell" and res.nqueries <= 3000 and res.fun < 1e-12


def test_auto_without_cma_warns_and_runs_zo_sgd(monkeypatch):
    monkeypatch.setitem(sys.modules, "cma", None)
    with pytest.warns(UserWarning, match="cma is missing"):
        res = bbzo.minimize(noisy_sphere(), np.zeros(3), method="auto", budget=300)
    assert res.method == "zo-sgd"


@pytest.mark.parametrize("kwargs", [dict(q=4), dict(lr=0.1), dict(estimator="cge"),
                                    dict(options={"popsize": 8}),
                                    dict(modules=[bbzo.blackbox.zo.antithetic()])])
def test_auto_refuses_method_settings(kwargs):
    with pytest.raises(InputError, match="method='auto' chooses every setting"):
        bbzo.minimize(lambda X: (X ** 2).sum(1), np.ones(3), method="auto", budget=100,
                      **kwargs)


@pytest.mark.parametrize("d, budget, q", [
    (2, 40_000, 10), (100, 20_000, 10), (1_000, 40_000, 32), (10_000, 100_000, 100),
    (10**6, None, 100), (10, 1_000, 5), (10, 100, 1),
])
def test_default_q(d, budget, q):
    assert default_q(d, budget) == q


def probe_1d(c, x, mu=1e-3):
    """Central-difference probe of f(x) = ½ c x² along u = 1, with f(x)."""
    def f(v):
        return torch.tensor(0.5 * c * v * v, dtype=torch.float64)
    return Probe(torch.ones(1, 1, dtype=torch.float64), f(x + mu)[None], f(x - mu)[None], f(x))


@pytest.mark.parametrize("c, lr, expected", [
    (2.0, 0.25, 0.25 * math.sqrt(2)),   # η* = 1/c = 0.5: moves halfway (geometric) to it
    (2.0, 0.05, 0.1),                    # η* is 10× away: at most 4× per step, √4 = 2
    (2.0, 2.0, 1.0),                     # overshoot (f rose): η* = 0.5, capped 4× down, √
])
def test_secant_step_moves_towards_the_line_search_step(c, lr, expected):
    rule = SecantStep(lambda k: float(k))
    x = 3.0
    assert rule.next(probe_1d(c, x), 1e-3, lr) == lr  # first step: nothing measured yet
    x_next = x - lr * c * x  # the step minimize takes along ĝ = c x
    assert rule.next(probe_1d(c, x_next), 1e-3, lr) == pytest.approx(expected, rel=1e-6)


def test_default_zo_sgd_beats_the_bold_driver_at_d_1000():
    """The secant rule vs the bold-driver rule, same budget and q: a scalars module that never
    acts (a clip far above every value) turns the secant rule off."""
    p = quadratic(d=1000, cond=10.0, rotation="fast")
    default = bbzo.minimize(p.fun, p.x0, budget=20_000)
    bold = bbzo.minimize(p.fun, p.x0, budget=20_000,
                         modules=bbzo.blackbox.zo.clip_scalars(1e12))
    assert p.relative_gap(default.x) < 0.2 * p.relative_gap(bold.x)  # measured: 9x
