"""Gradient estimators behave as theory says (seeded, with stated tolerances)."""

import math

import numpy as np
import pytest
import torch

import bbzo
from bbzo.blackbox.zo.estimators import CGE, RGE, RankEstimator, make_estimator
from bbzo.errors import InputError

D = 1000


def make_quadratic(d, seed=987_654_321):
    """f(x) = ½ Σ λ_i x_i² with λ in [1, 10]; returns (fun, x, true gradient).

    The problem's seed must differ from the estimators' seeds: torch draws the same stream for
    the same seed, and a direction equal to x would fake a perfect estimate."""
    gen = torch.Generator().manual_seed(seed)
    lam = 1 + 9 * torch.rand(d, generator=gen, dtype=torch.float64)
    x = torch.randn(d, generator=gen, dtype=torch.float64)
    return (lambda X: 0.5 * (X ** 2 * lam).sum(1)), x, lam * x


def rel_mse_and_cos(distribution, q, trials):
    fun, x, g = make_quadratic(D)
    mse, cos = [], []
    for seed in range(trials):
        est, _ = bbzo.estimate_gradient(fun, x, seed=seed,
                                        estimator=RGE(q=q, distribution=distribution))
        mse.append(float(((est - g) ** 2).sum() / (g ** 2).sum()))
        cos.append(float(torch.nn.functional.cosine_similarity(est, g, dim=0)))
    return np.mean(mse), math.sqrt(np.mean(np.square(cos)))


@pytest.mark.parametrize("distribution, offset", [("gaussian", 1), ("sphere", -1),
                                                  ("rademacher", -1)])
@pytest.mark.parametrize("q", [1, 16])
def test_rge_quality_law(distribution, offset, q):
    # Central differences are exact on a quadratic, so the error is the direction noise:
    # E‖ĝ−g‖²/‖g‖² = (d + 1)/q for Gaussian u, (d − 1)/q when ‖u‖² = d exactly; the RMS cosine
    # is √(q/(q+d)) (at q = 1 the mean |cos| is √(2/(πd)), hence the RMS).
    # At q = 1 the per-trial error is ~ d·χ²₁ (relative std √2), so 1500 trials put the 12%
    # tolerance beyond 3 standard errors; at q = 16 the spread is 4x smaller.
    mse, cos = rel_mse_and_cos(distribution, q, trials=1500 if q == 1 else 300)
    assert mse == pytest.approx((D + offset) / q, rel=0.12)
    assert cos == pytest.approx(math.sqrt(q / (q + D)), rel=0.12)


def test_rge_forward_has_mu_bias_but_same_law():
    fun, x, g = make_quadratic(50)
    errs = []
    for seed in range(400):
        est, n = bbzo.estimate_gradient(fun, x, estimator=RGE(q=5, difference="forward"),
                                        seed=seed)
        errs.append(float(((est - g) ** 2).sum() / (g ** 2).sum()))
    assert n == 6
    assert np.mean(errs) == pytest.approx(51 / 5, rel=0.15)


@pytest.mark.parametrize("difference, order", [("forward", 1), ("central", 2)])
def test_cge_exact_up_to_mu(difference, order):
    def fun(X):
        return torch.sin(X).sum(1) + (X ** 3).sum(1)

    x = torch.linspace(-1, 1, 7, dtype=torch.float64)
    true = torch.cos(x) + 3 * x ** 2
    errors = []
    for mu in (1e-2, 1e-3):
        g, n = bbzo.estimate_gradient(fun, x, estimator=CGE(mu=mu, difference=difference))
        assert n == (8 if difference == "forward" else 14)
        errors.append(float((g - true).abs().max()))
    assert errors[1] < 1e-2 ** order * 10
    # the error shrinks like mu^order
    assert errors[0] / errors[1] == pytest.approx(10 ** order, rel=0.3)


def test_cge_block_touches_only_the_block():
    fun, x, g = make_quadratic(20)
    est, n = bbzo.estimate_gradient(fun, x, estimator=CGE(block=5), seed=3)
    nonzero = torch.nonzero(est).flatten()
    assert n == 6 and len(nonzero) == 5
    assert torch.allclose(est[nonzero], g[nonzero], rtol=1e-3, atol=1e-3)


def test_rank_estimator_aligned_with_gradient():
    fun, x, g = make_quadratic(100)
    cos = []
    for seed in range(100):
        est, n = bbzo.estimate_gradient(fun, x, estimator="rank", q=20, seed=seed)
        cos.append(float(torch.nn.functional.cosine_similarity(est, g, dim=0)))
        assert n == 20
    assert np.mean(cos) > 0.2 and np.mean(np.array(cos) > 0) > 0.95


def test_rank_estimator_uses_only_the_ordering():
    # A monotone transform of f leaves the ranking, hence the estimate, unchanged.
    fun, x, _ = make_quadratic(30)
    a, _ = bbzo.estimate_gradient(fun, x, estimator="rank", q=8, seed=1)
    b, _ = bbzo.estimate_gradient(lambda X: torch.exp(fun(X) / 100) - 7, x, estimator="rank",
                                  q=8, seed=1)
    assert torch.equal(a, b)


def test_rank_estimator_with_external_ranker():
    fun, x, g = make_quadratic(30)
    calls = []

    def ranker(points):
        calls.append(points.shape)
        return torch.argsort(fun(points))

    est = RankEstimator(m=6, ranker=ranker)
    out, n = bbzo.estimate_gradient(lambda X: (_ for _ in ()).throw(AssertionError), x,
                                    estimator=est)
    assert calls == [(6, 30)] and n == 0
    with pytest.raises(InputError, match="permutation"):
        bbzo.estimate_gradient(fun, x, estimator=RankEstimator(m=4, ranker=lambda p: [0, 0, 1, 2]))


def test_batched_single_call_per_step_and_counts():
    calls = []

    def fun(X):
        calls.append(X.shape[0])
        return (X ** 2).sum(1)

    res = bbzo.minimize(fun, np.ones(5), q=3, lr=0.01, maxiter=7)
    assert calls == [6] * 7 and res.nqueries == 42 == sum(calls)


def test_same_seed_same_estimate_other_seed_differs():
    fun, x, _ = make_quadratic(10)
    a, _ = bbzo.estimate_gradient(fun, x, seed=5)
    b, _ = bbzo.estimate_gradient(fun, x, seed=5)
    c, _ = bbzo.estimate_gradient(fun, x, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kwargs, match", [
    (dict(estimator="spsa"), "unknown estimator 'spsa'; choose one of rge, cge, rank"),
    (dict(q=0), "q must be a positive integer"),
    (dict(mu=-1.0), "mu must be a positive"),
    (dict(estimator="rank", q=1), "m >= 2"),
])
def test_bad_estimator_options(kwargs, match):
    with pytest.raises(InputError, match=match):
        bbzo.estimate_gradient(lambda X: (X ** 2).sum(1), np.ones(3), **kwargs)


def test_make_estimator_rejects_bad_option():
    with pytest.raises(InputError, match="cge"):
        make_estimator("cge", distribution="gaussian")
