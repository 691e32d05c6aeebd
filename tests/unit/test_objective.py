"""The counting layer: shapes, validation, counts, budgets."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bbzo
from bbzo.blackbox.budget import Budget, as_budget
from bbzo.blackbox.zo.objective import Objective, as_vector
from bbzo.errors import BudgetExceeded, InputError, ObjectiveError


def sphere(X):
    return (X ** 2).sum(1)


def test_numpy_in_numpy_out_and_counts():
    seen = []

    def fun(X):
        seen.append(type(X))
        return (X ** 2).sum(1)

    x, numpy_io = as_vector([1.0, 2.0])
    obj = Objective(fun, x, numpy_io=numpy_io)
    y = obj(torch.stack([x, 2 * x]))
    assert seen == [np.ndarray]
    assert torch.allclose(y, torch.tensor([5.0, 20.0], dtype=torch.float64))
    assert (obj.nqueries, obj.ncalls) == (2, 1)
    assert isinstance(obj.export(obj.best_x), np.ndarray) and obj.best_fun == 5.0


def test_tensor_input_keeps_dtype_and_type():
    x = torch.ones(3, dtype=torch.float32)
    g, n = bbzo.estimate_gradient(sphere, x, q=4)
    assert isinstance(g, torch.Tensor) and g.dtype == torch.float32 and n == 8


@pytest.mark.parametrize("bad, match", [
    (lambda X: X.sum(), r"shape \(4,\)"),
    (lambda X: np.zeros((len(X), 2)), r"shape \(4,\)"),
    (lambda X: np.full(len(X), np.nan), "NaN or inf"),
    (lambda X: np.full(len(X), np.inf), "NaN or inf"),
    (lambda X: "oops", "not an array|shape"),
])
def test_misbehaving_objective_is_named(bad, match):
    x, _ = as_vector([1.0, 2.0])
    obj = Objective(bad, x, numpy_io=True)
    with pytest.raises(ObjectiveError, match=match):
        obj(torch.zeros(4, 2, dtype=torch.float64))


def test_column_vector_output_is_accepted():
    x, _ = as_vector([1.0])
    obj = Objective(lambda X: X ** 2, x, numpy_io=True)
    assert obj(torch.ones(3, 1, dtype=torch.float64)).shape == (3,)


@pytest.mark.parametrize("x0", [[], [[1.0, 2.0]], [1.0, float("nan")], "abc"])
def test_bad_start_points(x0):
    with pytest.raises(InputError):
        bbzo.minimize(sphere, x0, maxiter=1)


def test_wrong_batch_width_is_input_error():
    x, _ = as_vector([1.0, 2.0])
    with pytest.raises(InputError, match=r"\(n, 2\)"):
        Objective(sphere, x)(torch.zeros(3, 5, dtype=torch.float64))


@pytest.mark.parametrize("budget", [0, -5, 2.5, "10", True])
def test_non_positive_or_odd_budget_rejected(budget):
    with pytest.raises(InputError, match="(?i)budget"):
        as_budget(budget)


def test_budget_refuses_whole_batch_and_carries_best_point():
    x, _ = as_vector([3.0, 4.0])
    obj = Objective(sphere, x, numpy_io=True, budget=5)
    obj(torch.stack([x, x / 2, x / 4]))
    with pytest.raises(BudgetExceeded) as info:
        obj(torch.stack([x, x, x]))
    assert obj.nqueries == 3 and obj.budget.queries == 3
    np.testing.assert_allclose(info.value.best_x, [0.75, 1.0])
    assert info.value.best_fun == pytest.approx(1.5625) and info.value.nqueries == 3


def test_budget_token_and_cost_limits():
    b = Budget(max_tokens=100, max_cost=0.5)
    b.reserve(queries=1, tokens=60, cost=0.2)
    assert not b.can_afford(tokens=50)
    with pytest.raises(BudgetExceeded, match="cost"):
        b.reserve(cost=0.4)
    b.settle(tokens=-20)
    b.reserve(tokens=50)
    assert b.tokens == 90


@settings(max_examples=40, deadline=None)
@given(limit=st.integers(1, 200), q=st.integers(1, 12), d=st.integers(1, 6),
       estimator=st.sampled_from(["rge", "cge", "rank"]),
       method=st.sampled_from(["zo-sgd", "zo-adam"]), auto=st.booleans())
def test_budget_is_never_exceeded(limit, q, d, estimator, method, auto):
    calls = []

    def fun(X):
        calls.append(len(X))
        return (X ** 2).sum(1) + X[:, 0]

    q = max(q, 2) if estimator == "rank" else q
    try:
        res = bbzo.minimize(fun, np.ones(d), estimator=estimator,
                            q=None if estimator == "cge" else q, method=method,
                            budget=limit, lr=None if auto else 0.01, maxiter=50)
    except BudgetExceeded as err:
        assert "too small" in str(err)
        assert sum(calls) <= limit
        return
    assert sum(calls) == res.nqueries <= limit
    assert res.fun == pytest.approx(float(fun(np.asarray(res.x)[None])[0]))


class MeteredSphere:
    """Stand-in for the query layer's adapter: meters itself, serves repeats from a ledger
    (free), reserves only the rows it really sends, raises BudgetExceeded itself."""

    meters_queries = True

    def __init__(self, budget):
        self.budget, self.nsent, self.ledger = budget, 0, {}

    def __call__(self, X):
        keys = [tuple(np.asarray(row).tolist()) for row in X]
        new = list(dict.fromkeys(k for k in keys if k not in self.ledger))
        self.budget.reserve(queries=len(new))
        self.nsent += len(new)
        self.ledger.update({k: sum(v * v for v in k) for k in new})
        return np.array([self.ledger[k] for k in keys])


def test_metered_fun_keeps_its_budget_and_reports_rows_sent():
    fun = MeteredSphere(Budget(max_queries=5))
    x, _ = as_vector([1.0, 2.0])
    obj = Objective(fun, x, numpy_io=True)
    assert obj.budget is fun.budget and obj.metered
    obj(torch.stack([x, x, 2 * x]))
    assert (obj.nqueries, obj.nsent, fun.budget.queries) == (3, 2, 2)
    obj(torch.stack([x, 3 * x, 4 * x]))
    assert (obj.nqueries, obj.nsent, fun.budget.queries) == (6, 4, 4)
    with pytest.raises(BudgetExceeded) as err:
        obj(torch.stack([5 * x, 6 * x]))
    assert err.value.best_fun == 5.0 and np.allclose(err.value.best_x, [1.0, 2.0])
    assert err.value.nqueries == 6 and fun.budget.queries == 4 and obj.nqueries == 6


def test_metered_fun_refuses_another_budget():
    fun = MeteredSphere(Budget(max_queries=5))
    x, _ = as_vector([1.0])
    assert Objective(fun, x, budget=fun.budget).budget is fun.budget
    for other in (10, Budget(max_queries=5)):
        with pytest.raises(InputError, match="meters its own queries"):
            Objective(fun, x, budget=other)


def test_minimize_under_a_metered_fun_stops_on_its_budget():
    fun = MeteredSphere(Budget(max_queries=40))
    res = bbzo.minimize(fun, np.ones(3), q=2, lr=0.05)
    assert fun.budget.queries <= 40 and "budget" in res.message and not res.success
    assert res.nqueries >= fun.nsent and res.fun == pytest.approx(sum(np.asarray(res.x) ** 2))
