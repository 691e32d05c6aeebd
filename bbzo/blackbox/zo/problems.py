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
    exact: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def dim(self) -> int:
        return self.x0.size

    def value(self, x: np.ndarray) -> float:
        """The noise-free objective at one point x (d,) (``exact`` when ``fun`` is noisy)."""
        return float((self.exact or self.fun)(np.asarray(x, dtype=np.float64)[None])[0])

    def relative_gap(self, x: np.ndarray) -> float:
        """(f(x) − f*) / (f(x0) − f*), noise-free: 1 at the start, 0 at the optimum."""
        return (self.value(x) - self.f_star) / (self.value(self.x0) - self.f_star)


def quadratic(d: int = 20, cond: float = 100.0, seed: int = 0,
              rotation: str = "dense") -> Problem:
    """f(x) = ½ (x − 1)ᵀ A (x − 1) with A = Q diag(λ) Qᵀ, λ log-spaced in [1, cond], Q a random
    rotation drawn from ``seed``. Minimum 0 at x = 1; starts at x = 0.

    ``rotation="dense"`` stores Q (d² memory, d² flops a query); ``"fast"`` uses
    Q = DCT · random permutation · random signs instead (d memory, d log d flops a query), for
    d in the tens of thousands.
    """
    if d < 1 or not cond >= 1:
        raise InputError(f"quadratic needs d >= 1 and cond >= 1, got d={d}, cond={cond}")
    if rotation not in ("dense", "fast"):
        raise InputError(f"rotation must be 'dense' or 'fast', got {rotation!r}")
    rng = np.random.default_rng(seed)
    if rotation == "fast":
        return _fast_quadratic(d, cond, rng)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a = (q * np.logspace(0.0, np.log10(cond), d)) @ q.T
    center = np.ones(d)

    def fun(X: np.ndarray) -> np.ndarray:
        r = X - center
        return 0.5 * np.einsum("ni,ij,nj->n", r, a, r)

    return Problem(f"quadratic-d{d}", fun, np.zeros(d), 0.0, "exact")


def _fast_quadratic(d: int, cond: float, rng: np.random.Generator) -> Problem:
    from scipy.fft import dct  # imported here: scipy.fft is slow to import

    signs = rng.choice([-1.0, 1.0], size=d)
    order = rng.permutation(d)
    scale = np.logspace(0.0, np.log10(cond), d)

    def fun(X: np.ndarray) -> np.ndarray:
        z = dct(((X - 1.0) * signs)[:, order], norm="ortho", axis=1)
        return 0.5 * (scale * z * z).sum(1)

    return Problem(f"quadratic-d{d}", fun, np.zeros(d), 0.0, "exact")


def rosenbrock(d: int = 2) -> Problem:
    """Chained Rosenbrock f(x) = Σ_{i<d} (1 − x_i)² + 100 (x_{i+1} − x_i²)²; minimum 0 at
    x = 1; starts at (−1.2, 1, −1.2, 1, …) (d = 2: the classic (−1.2, 1))."""
    if d < 2:
        raise InputError(f"rosenbrock needs d >= 2, got d={d}")

    def fun(X: np.ndarray) -> np.ndarray:
        head, tail = X[:, :-1], X[:, 1:]
        return ((1.0 - head) ** 2 + 100.0 * (tail - head ** 2) ** 2).sum(1)

    x0 = np.where(np.arange(d) % 2 == 0, -1.2, 1.0)
    return Problem(f"rosenbrock-d{d}", fun, x0, 0.0, "exact")


def logistic_regression(l2: float = 1e-2, d: int | None = None, samples: int = 200,
                        seed: int = 0) -> Problem:
    """Mean logistic loss plus (l2/2)‖w‖² on the weights (not the intercept); starts at 0.

    ``d=None``: sklearn's breast-cancer data (569 × 30, standardised), d = 31 (weights, then
    intercept). ``d=k``: ``samples`` synthetic points with k − 1 Gaussian features whose scales
    decay as 1/√(i+1) (an ill-conditioned design), labels from a random linear model with 10%
    flipped, drawn from ``seed``.
    """
    if not l2 > 0:
        raise InputError(f"l2 must be positive (the unregularised problem has no finite "
                         f"minimiser), got {l2!r}")
    if d is not None and d < 2:
        raise InputError(f"logistic_regression needs d >= 2 (weights and intercept), got d={d}")
    # Imported here: scikit-learn and scipy.optimize take seconds to import, and the CLI
    # imports this module on start.
    from scipy.optimize import minimize as scipy_minimize

    if d is None:
        from sklearn.datasets import load_breast_cancer

        features, labels = load_breast_cancer(return_X_y=True)
        features = (features - features.mean(0)) / features.std(0)
    else:
        rng = np.random.default_rng(seed)
        features = rng.standard_normal((samples, d - 1)) / np.sqrt(np.arange(1, d))
        labels = (features @ rng.standard_normal(d - 1) > 0) ^ (rng.random(samples) < 0.1)
        labels = labels.astype(np.float64)
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
    method = "BFGS" if d is None else "L-BFGS-B"  # BFGS keeps a d² matrix
    ref = scipy_minimize(value_and_grad, x0, jac=True, method=method,
                         options={"gtol": 1e-9} if d is None else
                         {"gtol": 1e-12, "ftol": 1e-15, "maxiter": 100_000})
    return Problem(f"logistic-d{design.shape[1]}", fun, x0, float(ref.fun),
                   f"scipy {method}, exact gradient")


def noisy(problem: Problem, sigma: float, seed: int = 0) -> Problem:
    """``problem`` with independent Gaussian noise of standard deviation ``sigma`` added to
    every value (``exact`` keeps the noise-free objective, for measuring gaps)."""
    if not sigma > 0:
        raise InputError(f"sigma must be positive, got {sigma!r}")
    rng = np.random.default_rng(seed)

    def fun(X: np.ndarray) -> np.ndarray:
        return problem.fun(X) + sigma * rng.standard_normal(len(X))

    return Problem(f"noisy-{problem.name}", fun, problem.x0, problem.f_star, problem.reference,
                   exact=problem.fun)


def standard_problems() -> list[Problem]:
    """The demo's three problems: ill-conditioned quadratic (d = 20, cond 100), 2-d Rosenbrock,
    regularised logistic regression (d = 31)."""
    return [quadratic(), rosenbrock(), logistic_regression()]
