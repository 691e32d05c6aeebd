"""EvolutionStrategy runs the shared estimate pipeline: every module of its chain acts, and a
module no path can honour is refused (hand computations, seeded)."""

import numpy as np
import pytest
import torch

import bbzo
from bbzo.blackbox.zo.es import EvolutionStrategy
from bbzo.blackbox.zo.estimators import CGE, RankEstimator
from bbzo.blackbox.zo.modules import (
    antithetic,
    centered_rank,
    centered_ranks,
    clip_scalars,
    hizoo,
    random_mask,
    standardize,
)
from bbzo.blackbox.zo.transforms import Module, chain
from bbzo.blackbox.zo.update import adam, momentum


def shifted_quadratic(X):
    X = np.asarray(X)
    return ((X - np.arange(X.shape[1])) ** 2 * np.linspace(1, 5, X.shape[1])).sum(1)


def one_generation(es, fun=shifted_quadratic):
    X = es.ask()
    y = fun(X)
    es.tell(X, y)
    return np.asarray(X), y


def by_hand(X, y, mean, sigma, shape=None, clip=None):
    """ĝ = (1/k) Σ_j clip(s_j) ε_j with s_j = (w₊ⱼ − w₋ⱼ)/(2σ), w = shape(values of the pairs)."""
    k = len(X) // 2
    eps = (X[:k] - mean) / sigma
    w = np.asarray(shape(torch.as_tensor(y[:2 * k]))) if shape else y[:2 * k]
    s = (w[:k] - w[k:2 * k]) / (2 * sigma)
    if clip is not None:
        assert np.abs(s).max() > clip  # the clip is active, so dropping it would show
        s = np.clip(s, -clip, clip)
    return s @ eps / k


def test_es_clip_scalars_really_clips():
    mean = np.ones(6)
    es = EvolutionStrategy(mean, sigma=0.1, population_size=8, lr=0.05, fitness_shaping="none",
                           modules=clip_scalars(0.5), seed=0)
    X, y = one_generation(es)
    g = by_hand(X, y, mean, 0.1, clip=0.5)
    np.testing.assert_allclose(es.grad.numpy(), g, rtol=1e-12)
    np.testing.assert_allclose(es.mean.numpy(), mean - 0.05 * g, rtol=1e-12)


def test_es_honours_a_whole_chain_given_as_optimizer():
    # antithetic(): ES draws ± pairs by construction (population size unchanged); centred ranks
    # (the default shaping), then clipping at 1, then Adam's first step g/(|g| + eps).
    mean = np.zeros(5)
    es = EvolutionStrategy(mean, sigma=0.05, population_size=10, lr=0.01,
                           optimizer=chain(antithetic(), clip_scalars(1.0), adam()), seed=1)
    assert es.ask_size == 10
    X, y = one_generation(es)
    np.testing.assert_allclose(X[:5] + X[5:], 0.0, atol=1e-15)
    g = by_hand(X, y, mean, 0.05, shape=centered_ranks, clip=1.0)
    np.testing.assert_allclose(es.grad.numpy(), g, rtol=1e-12)
    np.testing.assert_allclose(es.mean.numpy(), mean - 0.01 * g / (np.abs(g) + 1e-8), rtol=1e-9)


@pytest.mark.parametrize("shaping, function", [("centered_rank", centered_ranks),
                                               ("standardize", None)])
def test_fitness_shaping_is_the_module_on_the_scalars(shaping, function):
    mean = np.full(4, 0.5)
    a = EvolutionStrategy(mean, sigma=0.1, population_size=6, fitness_shaping=shaping, seed=2)
    module = centered_rank() if shaping == "centered_rank" else standardize()
    b = EvolutionStrategy(mean, sigma=0.1, population_size=6, fitness_shaping="none",
                          modules=module, seed=2, evaluate_mean=True)
    X, y = one_generation(a)
    one_generation(b)  # b also measures the mean; shaping uses the pairs' values only
    shape = function or (lambda v: (v - v.mean()) / v.std())
    np.testing.assert_allclose(a.grad.numpy(), by_hand(X, y, mean, 0.1, shape=shape), rtol=1e-9)
    torch.testing.assert_close(a.grad, b.grad)


def test_es_masks_confine_the_estimate():
    es = EvolutionStrategy(np.ones(10), sigma=0.1, population_size=6, modules=random_mask(0.3),
                           seed=0)
    X, _ = one_generation(es)
    assert int((es.grad != 0).sum()) == 3
    moved = np.abs(X - 1.0).sum(0) > 0
    assert int(moved.sum()) == 3


def test_es_module_needing_f_of_the_mean_adds_that_row():
    es = EvolutionStrategy(np.ones(4), sigma=0.1, population_size=6, modules=hizoo(alpha=0.5),
                           fitness_shaping="none", seed=0)
    assert es.ask_size == 7
    X, _ = one_generation(es)
    np.testing.assert_array_equal(X[-1], np.ones(4))
    assert not torch.equal(es.module_state[0].sigma, torch.ones(4, dtype=torch.float64))


def test_centered_rank_module_makes_estimates_invariant_to_monotone_maps():
    x = np.linspace(-1, 1, 8)

    def f(X):
        return (np.asarray(X) ** 2).sum(1)

    a, _ = bbzo.estimate_gradient(f, x, q=6, modules=centered_rank(), seed=3)
    b, _ = bbzo.estimate_gradient(lambda X: np.exp(f(X)) - 4, x, q=6, modules=centered_rank(),
                                  seed=3)
    c, _ = bbzo.estimate_gradient(f, x, q=6, seed=3)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_minimize_with_centered_rank_converges(seed):
    # Shaped scalars are O(1/μ) whatever the scale of f (here e^{‖x‖²}, f(x0) = e⁵), so the
    # step size is set for that. Measured ‖x‖² after 300 steps: 0.0012..0.0032.
    res = bbzo.minimize(lambda X: np.exp((np.asarray(X) ** 2).sum(1)), np.ones(5), lr=1e-3,
                        modules=centered_rank(), maxiter=300, seed=seed)
    assert np.log(res.fun) < 0.01


class NeedsValues(Module):
    needs_values = True


@pytest.mark.parametrize("build, match", [
    (lambda: EvolutionStrategy(np.ones(3), sigma=0.1, optimizer="adam", modules=[adam()]),
     "another update rule"),
    (lambda: EvolutionStrategy(np.ones(3), sigma=0.1, modules=[centered_rank()]),
     "fitness shaping given twice"),
    (lambda: EvolutionStrategy(np.ones(3), sigma=0.1, optimizer=chain(momentum(), adam())),
     "one update rule"),
    (lambda: chain(clip_scalars(1.0), centered_rank()), "put it before ClipScalars"),
    (lambda: bbzo.estimate_gradient(shifted_quadratic, np.ones(3), estimator=CGE(),
                                    modules=antithetic()), "estimator 'rge'"),
    (lambda: bbzo.estimate_gradient(shifted_quadratic, np.ones(3), estimator="rank",
                                    modules=centered_rank()), "rank-based already"),
    (lambda: bbzo.estimate_gradient(shifted_quadratic, np.ones(3), modules=NeedsValues(),
                                    estimator=RankEstimator(ranker=lambda p: range(len(p)))),
     "external ranker gives no values"),
])
def test_modules_a_path_cannot_honour_are_refused(build, match):
    with pytest.raises(bbzo.InputError, match=match):
        build()
