"""minimize converges on standard problems within stated budgets, with default settings."""

import numpy as np
import pytest
import torch

import bbzo
from bbzo.blackbox.zo.problems import logistic_regression, quadratic, rosenbrock
from bbzo.errors import InputError


@pytest.mark.parametrize("problem, budget, tol", [
    # gap to the optimum after `budget` queries with every option at its default
    (quadratic(d=20, cond=100.0), 20_000, 1e-3),      # f(x0) = 336
    (rosenbrock(), 40_000, 1e-2),                     # f(x0) = 24.2
    (logistic_regression(), 20_000, 1e-4),            # f(x0) = 0.693
])
def test_defaults_converge(problem, budget, tol):
    res = bbzo.minimize(problem.fun, problem.x0, budget=budget)
    assert res.nqueries <= budget
    assert res.fun - problem.f_star < tol, (problem.name, res.fun, res.message)
    assert res.fun == pytest.approx(float(problem.fun(res.x[None])[0]))


@pytest.mark.parametrize("method", ["zo-adam", "zo-momentum", "zo-sign-sgd"])
def test_other_methods_reach_rosenbrock_valley_floor(method):
    p = rosenbrock()
    res = bbzo.minimize(p.fun, p.x0, method=method, q=1, budget=20_000)
    assert res.fun < 1e-2, (method, res.fun)


def test_zo_adam_rosenbrock_precise():
    p = rosenbrock()
    res = bbzo.minimize(p.fun, p.x0, method="zo-adam", q=4, budget=20_000)
    assert res.fun < 1e-6 and np.allclose(res.x, [1.0, 1.0], atol=1e-2)


def test_cge_converges_on_quadratic():
    p = quadratic(d=10, cond=10.0)
    res = bbzo.minimize(p.fun, p.x0, estimator="cge", budget=5_000)
    assert res.fun < 1e-6


def test_fixed_lr_is_respected_and_history_is_consistent():
    p = quadratic(d=5, cond=3.0)
    res = bbzo.minimize(p.fun, p.x0, lr=0.01, q=2, maxiter=50)
    assert res.nit == 50 and len(res.history) == 50 and res.lr == 0.01
    assert all(h["lr"] == 0.01 for h in res.history)
    assert [h["nqueries"] for h in res.history] == [4 * (i + 1) for i in range(50)]
    best = [h["best"] for h in res.history]
    assert best == sorted(best, reverse=True) and best[-1] == res.fun
    assert "maximum number of iterations" in res.message


def test_torch_objective_and_result_type():
    target = torch.arange(4, dtype=torch.float32)
    res = bbzo.minimize(lambda X: ((X - target) ** 2).sum(1), torch.zeros(4), budget=3000)
    assert isinstance(res.x, torch.Tensor) and res.x.dtype == torch.float32
    assert torch.allclose(res.x, target, atol=1e-2)


def test_reproducible_with_seed():
    p = rosenbrock()
    a = bbzo.minimize(p.fun, p.x0, budget=2000, seed=3)
    b = bbzo.minimize(p.fun, p.x0, budget=2000, seed=3)
    c = bbzo.minimize(p.fun, p.x0, budget=2000, seed=4)
    assert np.array_equal(a.x, b.x) and a.history == b.history
    assert not np.array_equal(a.x, c.x)


def test_callback_stops():
    p = quadratic(d=4, cond=2.0)
    seen = []
    res = bbzo.minimize(p.fun, p.x0, callback=lambda info: seen.append(info) or len(seen) == 3)
    assert res.nit == 3 and res.message == "stopped by callback"
    assert set(seen[0]) == {"nit", "nqueries", "loss", "best", "lr"}


def test_budget_stop_is_reported():
    p = quadratic(d=4, cond=2.0)
    res = bbzo.minimize(p.fun, p.x0, q=3, lr=0.01, budget=100)
    assert res.nqueries <= 100 and "budget" in res.message and res.nit == 16


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="bfgs"), "unknown method 'bfgs'"),
    (dict(lr=-1.0), "lr must be a positive"),
    (dict(maxiter=0), "maxiter must be a positive integer"),
    (dict(modules=["antithetic"]), "chain\\(\\) takes bbzo modules"),
    (dict(callback=3), "callback must be callable"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        bbzo.minimize(lambda X: (X ** 2).sum(1), np.ones(3), **kwargs)


def test_budget_too_small_for_one_step():
    with pytest.raises(bbzo.BudgetExceeded, match="too small"):
        bbzo.minimize(lambda X: (X ** 2).sum(1), np.ones(3), q=10, budget=5)


def test_external_ranker_needs_fixed_lr_and_reports_no_values():
    target = np.arange(3.0)

    def ranker(points):  # a "judge" that only orders points; no loss values leave it
        return np.argsort(((points.numpy() - target) ** 2).sum(1))

    from bbzo.blackbox.zo.estimators import RankEstimator
    est = RankEstimator(m=6, ranker=ranker)
    with pytest.raises(InputError, match="fixed lr"):
        bbzo.minimize(lambda X: X.sum(1), np.zeros(3), estimator=est)
    res = bbzo.minimize(lambda X: X.sum(1), np.zeros(3), estimator=est, lr=0.05, maxiter=300)
    assert res.nqueries == 0 and np.isnan(res.fun) and "no loss values" in res.message
    assert np.linalg.norm(res.x - target) < 0.3


@pytest.mark.parametrize("kwargs, match", [
    (dict(estimator="cge", q=4), "q is not used by estimator 'cge'"),
    (dict(estimator=bbzo.blackbox.zo.RGE(q=4), q=4), "q would be ignored"),
    (dict(estimator=bbzo.blackbox.zo.RGE(q=4), mu=1e-2), "mu would be ignored"),
    (dict(method="zo-adam", modules=[bbzo.blackbox.zo.adam()]), "another update rule"),
    (dict(modules=[bbzo.blackbox.zo.momentum(), bbzo.blackbox.zo.sign()]), "one update rule"),
    (dict(ftol=0.0), "ftol must be a positive"),
])
def test_ignored_or_stacked_arguments_are_refused(kwargs, match):
    with pytest.raises(InputError, match=match):
        bbzo.minimize(lambda X: (X ** 2).sum(1), np.ones(3), **kwargs)


def test_estimate_gradient_refuses_update_rules():
    with pytest.raises(InputError, match="raw estimate"):
        bbzo.estimate_gradient(lambda X: (X ** 2).sum(1), np.ones(3),
                               modules=bbzo.blackbox.zo.adam())


def test_success_only_when_target_met_or_converged():
    fun, x0 = (lambda X: (np.asarray(X) ** 2).sum(1)), np.ones(4)
    ran_out = bbzo.minimize(fun, x0, lr=0.01, maxiter=5)
    assert not ran_out.success and "maximum number of iterations" in ran_out.message
    broke = bbzo.minimize(fun, x0, lr=0.01, budget=50)
    assert not broke.success and "budget" in broke.message
    hit = bbzo.minimize(fun, x0, lr=0.1, maxiter=1000, target=1e-3)
    assert hit.success and "target reached" in hit.message and hit.fun <= 1e-3
    assert hit.nit < 1000
    hit_history = [h["best"] for h in hit.history]
    assert all(b > 1e-3 for b in hit_history[:-1]) and hit_history[-1] <= 1e-3
    flat = bbzo.minimize(lambda X: np.zeros(len(X)), x0, lr=0.1, maxiter=1000, ftol=1e-9,
                         window=10)
    assert flat.success and "converged" in flat.message and flat.nit == 11
