"""Per-row gradient estimates on a batch (B, d): one call of the objective, exact query counts,
each row with its own directions and module state (seeded; tolerances stated)."""

import math

import numpy as np
import pytest
import torch

import bbzo
from bbzo.blackbox.zo.estimators import CGE, RGE, RankEstimator
from bbzo.blackbox.zo.modules import clip_scalars, random_mask


class Recorder:
    """A batched objective that keeps every batch it is asked for."""

    def __init__(self, fun):
        self.fun, self.batches = fun, []

    def __call__(self, X):
        self.batches.append(torch.as_tensor(X).clone())
        return self.fun(X)


def quadratic_rows(B, d, seed=987_654_321):
    """f(x) = ½ Σ λ_i x_i² with λ in [1, 10]; B random rows and their true gradients."""
    gen = torch.Generator().manual_seed(seed)
    lam = 1 + 9 * torch.rand(d, generator=gen, dtype=torch.float64)
    X = torch.randn(B, d, generator=gen, dtype=torch.float64)
    return (lambda Y: 0.5 * (Y ** 2 * lam).sum(1)), X, lam * X


def test_per_row_rge_follows_the_quality_law_in_one_call():
    # As in test_estimators.test_rge_quality_law: RMS cosine √(q/(q+d)) within 12% over 300
    # independent estimates; here the 300 estimates are the 300 rows of one batch.
    B, d, q = 300, 1000, 16
    fun, X, G = quadratic_rows(B, d)
    rec = Recorder(fun)
    est, n = bbzo.estimate_gradient(rec, X, estimator=RGE(q=q), seed=0)
    assert est.shape == (B, d) and n == B * 2 * q and len(rec.batches) == 1
    cos = torch.nn.functional.cosine_similarity(est, G, dim=1)
    assert math.sqrt(float((cos ** 2).mean())) == pytest.approx(math.sqrt(q / (q + d)), rel=0.12)


def test_identical_rows_get_different_directions():
    fun, X, _ = quadratic_rows(1, 30)
    rec = Recorder(fun)
    est, _ = bbzo.estimate_gradient(rec, X.repeat(4, 1), q=3, seed=1)
    perturbations = rec.batches[0].reshape(4, 6, 30) - X
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(est[i], est[j])
            assert not torch.allclose(perturbations[i], perturbations[j])


@pytest.mark.parametrize("estimator, per_row", [
    (RGE(q=5), 2 * 5),
    (RGE(q=5, difference="forward"), 5 + 1),
    (CGE(), 7 + 1),
    (CGE(difference="central"), 2 * 7),
    (CGE(block=3), 3 + 1),
    (RankEstimator(m=4), 4),
])
def test_query_count_is_exact_and_one_call_per_estimate(estimator, per_row):
    B = 6
    fun, X, _ = quadratic_rows(B, 7)
    rec = Recorder(fun)
    est, n = bbzo.estimate_gradient(rec, X, estimator=estimator, seed=2)
    assert n == B * per_row and len(rec.batches) == 1 and rec.batches[0].shape == (n, 7)
    assert est.shape == (B, 7)


def test_cge_rows_are_exact_on_a_quadratic():
    fun, X, G = quadratic_rows(5, 8)
    est, _ = bbzo.estimate_gradient(fun, X, estimator=CGE(mu=1e-6, difference="central"))
    assert torch.allclose(est, G, atol=1e-6)


def test_one_row_batch_equals_the_single_point_estimate():
    fun, X, _ = quadratic_rows(1, 12)
    single, n1 = bbzo.estimate_gradient(fun, X[0], q=4, seed=3)
    batch, n2 = bbzo.estimate_gradient(fun, X, q=4, seed=3)
    assert single.shape == (12,) and batch.shape == (1, 12) and n1 == n2 == 8
    assert torch.equal(single, batch[0])


def test_numpy_batch_in_numpy_batch_out():
    est, n = bbzo.estimate_gradient(lambda Y: (Y ** 2).sum(1), np.ones((3, 4)), q=2)
    assert isinstance(est, np.ndarray) and est.shape == (3, 4) and n == 12


def test_modules_act_per_row_with_their_own_state():
    # random_mask(0.25) on identical rows: each row keeps 5 of 20 coordinates, masks differ.
    fun, X, _ = quadratic_rows(1, 20)
    est, _ = bbzo.estimate_gradient(fun, X.repeat(3, 1), q=4, modules=random_mask(0.25), seed=0)
    supports = [set(torch.nonzero(row).flatten().tolist()) for row in est]
    assert all(len(s) == 5 for s in supports) and len({frozenset(s) for s in supports}) > 1


def test_clip_scalars_clips_each_row():
    # Row b's estimate is (1/q) Σ clamp(s_i) u_i with its own directions, read off the batch.
    fun, X, _ = quadratic_rows(3, 6)
    rec = Recorder(fun)
    mu, q, c = 1e-3, 4, 0.5
    est, _ = bbzo.estimate_gradient(rec, X, estimator=RGE(q=q, mu=mu),
                                    modules=clip_scalars(c), seed=4)
    points = rec.batches[0].reshape(3, 2 * q, 6)
    for b in range(3):
        u = (points[b, :q] - X[b]) / mu
        s = (fun(points[b, :q]) - fun(points[b, q:])) / (2 * mu)
        assert float(s.abs().max()) > c  # clipping is active
        expected = (s.clamp(-c, c)[:, None] * u).sum(0) / q
        assert torch.allclose(est[b], expected, atol=1e-8)


def test_bad_batch_shape_is_refused():
    with pytest.raises(bbzo.InputError, match=r"shape \(d,\) or \(B, d\)"):
        bbzo.estimate_gradient(lambda Y: Y.sum(1), np.ones((2, 3, 4)))
