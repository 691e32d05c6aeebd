"""Test problems with a known optimum, for demos, tests and benchmarks of the ZO engine.

Every problem's ``fun`` is batched numpy: ``fun(X)`` with X of shape (n, d) returns shape (n,).
``f_star`` is the exact minimum where it is known in closed form, otherwise the value scipy's
BFGS reaches with the exact gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bbzo.errors import InputError


@dataclass(frozen=True)
class Problem:
    """A minimisation problem.

    Attributes:
        name: short identifier.
        fun: batched objective (n, d) → (n,).
        x0: starting point, shape (d,).
        f_star: optimal value (exact or reference).
        reference: how ``f_star`` was obtained ("exact" or "scipy BFGS, exact gradient").
    """

    name: str
    fun: Callable[[np.ndarray], np.ndarray]
    x0: np.ndarray
    f_star: float
    reference: str

    @property
    def dim(self) -> int:
        return self.x0.size


def quadratic(d: int = 20, cond: float = 100.0, seed: int = 0) -> Problem:
    """f(x) = ½ (x − 1)ᵀ A (x − 1) with A = Q diag(λ) Qᵀ, λ log-spaced in [1, cond], Q a random
    rotation drawn from ``seed``. Minimum 0 at x = 1; starts at x = 0."""
    if d < 1 or not cond >= 1:
        raise InputError(f"quadratic needs d >= 1 and cond >= 1, got d={d}, cond={cond}")
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a = (q * np.logspace(0.0, np.log10(cond), d)) @ q.T
    center = np.ones(d)

    def fun(X: np.ndarray) -> np.ndarray:
        r = X - center
        return 0.5 * np.einsum("ni,ij,nj->n", r, a, r)

    return Problem(f"quadratic-d{d}", fun, np.zeros(d), 0.0, "exact")


def rosenbrock() -> Problem:
    """f(x, y) = (1 − x)² + 100 (y − x²)²; minimum 0 at (1, 1); starts at (−1.2, 1)."""

    def fun(X: np.ndarray) -> np.ndarray:
        return (1.0 - X[:, 0]) ** 2 + 100.0 * (X[:, 1] - X[:, 0] ** 2) ** 2

    return Problem("rosenbrock-d2", fun, np.array([-1.2, 1.0]), 0.0, "exact")


def logistic_regression(l2: float = 1e-2) -> Problem:
    """Mean logistic loss on sklearn's breast-cancer data (569 × 30, standardised) plus
    (l2/2)‖w‖² on the weights (not the intercept). d = 31 (weights, then intercept); starts at 0.
    """
    if not l2 > 0:
        raise InputError(f"l2 must be positive (the unregularised problem has no finite "
                         f"minimiser), got {l2!r}")
    # Imported here: scikit-learn and scipy.optimize take seconds to import, and the CLI
    # imports this module on start.
    from scipy.optimize import minimize as scipy_minimize
    from sklearn.datasets import load_breast_cancer

    features, labels = load_breast_cancer(return_X_y=True)
    features = (features - features.mean(0)) / features.std(0)
    design = np.hstack([features, np.ones((len(features), 1))])  # (m, 31)
    signs = 2.0 * labels - 1.0  # (m,) in {−1, +1}

    def fun(X: np.ndarray) -> np.ndarray:
        margins = (design @ X.T) * signs[:, None]  # (m, n)
        return np.logaddexp(0.0, -margins).mean(0) + 0.5 * l2 * (X[:, :-1] ** 2).sum(1)

    def value_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        margins = signs * (design @ w)
        weight = np.exp(-np.logaddexp(0.0, margins))  # sigmoid(−margin)
        grad = -(design.T @ (signs * weight)) / len(signs)
        grad[:-1] += l2 * w[:-1]
        return float(fun(w[None])[0]), grad

    x0 = np.zeros(design.shape[1])
    ref = scipy_minimize(value_and_grad, x0, jac=True, method="BFGS", options={"gtol": 1e-9})
    return Problem(f"logistic-d{design.shape[1]}", fun, x0, float(ref.fun),
                   "scipy BFGS, exact gradient")


def standard_problems() -> list[Problem]:
    """The demo's three problems: ill-conditioned quadratic (d = 20, cond 100), 2-d Rosenbrock,
    regularised logistic regression (d = 31)."""
    return [quadratic(), rosenbrock(), logistic_regression()]
