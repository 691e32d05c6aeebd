"""The autograd bridge: F(Z) of a black box, differentiable through per-row ZO estimates."""

import pytest
import torch
from torch import nn

import bbzo
from bbzo.blackbox.zo.estimators import RankEstimator
from bbzo.blackbox.zo.modules import hizoo, random_mask
from bbzo.blackbox.zo.update import adam


def fixed_quadratic(d, seed=123):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=gen, dtype=torch.float64)
    H = A @ A.T / d + torch.eye(d, dtype=torch.float64)
    c = torch.randn(d, generator=gen, dtype=torch.float64)
    return H, c, (lambda X: 0.5 * (((X - c) @ H) * (X - c)).sum(1))


class Counting:
    """Counts calls of a batched fun."""

    def __init__(self, fun):
        self.fun, self.calls = fun, []

    def __call__(self, X):
        self.calls.append(len(X))
        return self.fun(X)


def test_gradient_averaged_over_calls_matches_autograd_on_a_quadratic():
    d, B, q = 10, 4, 50
    H, c, fun = fixed_quadratic(d)
    F = bbzo.zo_function(fun, q=q, seed=0)
    Z = torch.randn(B, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    total = torch.zeros_like(Z)
    for _ in range(10):
        Zg = Z.clone().requires_grad_(True)
        F(Zg).sum().backward()
        total += Zg.grad
    true = (Z - c) @ H
    cos = torch.nn.functional.cosine_similarity(total, true, dim=1)
    assert bool((cos > 0.95).all()), cos


def test_gradient_matches_autograd_on_a_black_box_mlp():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1)).double()

    def black_box(X):
        with torch.no_grad():
            return mlp(X).squeeze(-1)

    Z = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    F = bbzo.zo_function(black_box, q=400, seed=3)
    F(Z).sum().backward()
    Zt = Z.detach().clone().requires_grad_(True)
    mlp(Zt).sum().backward()
    cos = torch.nn.functional.cosine_similarity(Z.grad, Zt.grad, dim=1)
    assert bool((cos > 0.95).all()), cos


def test_encoder_trained_through_the_bridge_lowers_the_black_box_loss():
    torch.manual_seed(0)
    _, c, fun = fixed_quadratic(3)
    black_box = Counting(lambda X: fun(X.double()).float())
    x = torch.randn(32, 4)
    encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.Adam(encoder.parameters(), lr=0.02)
    F = bbzo.zo_function(black_box, q=8, seed=0)
    with torch.no_grad():
        before = float(fun(encoder(x).double()).mean())
    for _ in range(150):
        opt.zero_grad()
        loss = F(encoder(x)).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(fun(encoder(x).double()).mean())
    assert after < 0.2 * before, (before, after)
    assert black_box.calls == [32 * 2 * 8] * 150 and F.nqueries == 150 * 32 * 16


def test_values_queries_and_one_call_per_forward():
    _, _, fun = fixed_quadratic(5)
    Z = torch.randn(3, 5, dtype=torch.float64)
    exact = fun(Z)
    for options, per_row, rel in [({}, 2 * 4, 1e-4), ({"center": True}, 2 * 4 + 1, 0),
                                  ({"estimator": "rge", "mu": 1e-3}, 8, 1e-4)]:
        black_box = Counting(fun)
        F = bbzo.zo_function(black_box, q=4, **options)
        values = F(Z)
        assert values.shape == (3,) and black_box.calls == [3 * per_row]
        assert torch.allclose(values, exact, rtol=rel, atol=0) if rel else torch.equal(values,
                                                                                        exact)
    forward = bbzo.zo_function(fun, estimator=bbzo.blackbox.zo.RGE(q=4, difference="forward"))
    assert torch.equal(forward(Z), exact) and forward.nqueries == 3 * 5


def test_seeded_calls_are_reproducible_and_advance():
    _, _, fun = fixed_quadratic(5)
    Z = torch.randn(2, 5, dtype=torch.float64)

    def grads(seed, calls=2):
        F = bbzo.zo_function(fun, q=3, seed=seed)
        out = []
        for _ in range(calls):
            Zg = Z.clone().requires_grad_(True)
            F(Zg).sum().backward()
            out.append(Zg.grad)
        return out

    a, b, c = grads(0), grads(0), grads(1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], c[0])


def test_grad_output_scales_each_row():
    _, _, fun = fixed_quadratic(4)
    Z = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    F1, F2 = bbzo.zo_function(fun, q=3, seed=5), bbzo.zo_function(fun, q=3, seed=5)
    F1(Z).sum().backward()
    g1 = Z.grad.clone()
    Z.grad = None
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    (F2(Z) * weights).sum().backward()
    assert torch.allclose(Z.grad, weights[:, None] * g1)


def test_budget_is_never_exceeded():
    _, _, fun = fixed_quadratic(4)
    black_box = Counting(fun)
    F = bbzo.zo_function(black_box, q=2, budget=50)
    Z = torch.randn(3, 4, dtype=torch.float64)
    F(Z), F(Z)  # 2 × 12 = 24 queries
    F(Z[:2])    # 8 more: 32
    with pytest.raises(bbzo.BudgetExceeded):
        F(Z), F(Z)  # 44, then 56 > 50
    assert sum(black_box.calls) == F.nqueries == 44 <= 50


@pytest.mark.parametrize("kwargs, match", [
    (dict(modules=adam()), "torch optimiser applies the update"),
    (dict(modules=hizoo()), "carries state"),
    (dict(estimator=RankEstimator(ranker=lambda p: range(len(p)))), "without an external ranker"),
    (dict(estimator="rank", center=True), "center=True"),
    (dict(estimator="cge", q=3), "q is not used"),
])
def test_refusals(kwargs, match):
    with pytest.raises(bbzo.InputError, match=match):
        bbzo.zo_function(lambda X: X.sum(1), **kwargs)


def test_bad_input_and_modules_per_row():
    F = bbzo.zo_function(lambda X: (X ** 2).sum(1), q=2, modules=random_mask(0.5), seed=0)
    with pytest.raises(bbzo.InputError, match=r"\(B, d\)"):
        F(torch.ones(4))
    Z = torch.ones(3, 8, dtype=torch.float64, requires_grad=True)
    F(Z).sum().backward()
    assert [int((row != 0).sum()) for row in Z.grad] == [4, 4, 4]
