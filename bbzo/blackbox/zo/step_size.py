"""The automatic step size of ``minimize`` for plain ZO-SGD: a secant rule on the curvature
measured along the last step, at no extra query.

For an estimate ĝ = Σᵢ sᵢuᵢ / scale built from directional derivatives sᵢ ≈ uᵢᵀ∇f, the slope of f
along −ĝ is a = ∇fᵀĝ ≈ Σᵢ sᵢ² / scale: known from the probes. After the step x' = x − η ĝ the
next estimate measures f(x'), so the curvature along ĝ follows from the parabola through f(x),
its slope −a and f(x'):  b = 2 (f(x') − f(x) + η a) / η², and the exact line-search step along
ĝ would have been η* = a / b. The next step size moves towards η* (geometric mean, at most 4×
per step); where b ≤ 0 it grows while f falls and shrinks when f rose; it stays put when the
change of f is rounding. On a quadratic η* ≈ q / tr(H) for q ≪ d directions: the
best fixed step for RGE, found without knowing H.

It needs exact f(x) each step (the estimator's center value) and noise-free values (noise in
f(x') − f(x) drives η to 0): ``minimize`` uses it only when a repeated evaluation of x0 agreed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from bbzo.blackbox.zo.estimators import CGE, RGE, Estimator
from bbzo.blackbox.zo.objective import Objective
from bbzo.blackbox.zo.transforms import Module, Probe, acts_at, difference_scalars

# Changes of f below this share of |f| are rounding, not curvature: the step size is kept.
ROUNDING = 1e-12
# Relative difference of two evaluations of one point still taken as rounding.
REPEAT_TOLERANCE = 1e-10
# Fewest queries left for which the rule is tried (its noise check costs 2).
MIN_BUDGET = 100


class MeasureCenter(Module):
    """Adds f(x) to each step's probes (one query) so the step size rule sees exact values."""

    needs_center = True


class SecantStep:
    """The secant step-size rule (see the module docstring).

    Args:
        scale: the estimator's normalisation of Σ sᵢuᵢ for k directions (``Estimator.scale``:
            k for RGE, 1 for CGE).

    """

    MAX_CHANGE = 4.0

    def __init__(self, scale: Callable[[int], float]) -> None:
        self.scale = scale
        self._last: tuple[float, float] | None = None  # (f(x), slope a) of the last step

    def forget(self) -> None:
        """Drop the last step (the caller moved x elsewhere)."""
        self._last = None

    def next(self, probe: Probe, mu: float, lr: float) -> float:
        """The step size for this step, from its probe (with f(x)), the last step's and the
        step size ``lr`` the last step used."""
        f = float(probe.f_center)
        s = difference_scalars(probe.f_plus, probe.f_minus, probe.f_center, mu)
        slope = float((s * s).sum()) / self.scale(s.numel())
        if self._last is not None and math.isfinite(slope):
            f_last, slope_last = self._last
            change, predicted = f - f_last, lr * slope_last
            if max(abs(change), predicted) > ROUNDING * max(abs(f), abs(f_last)):
                curvature = 2 * (change + predicted) / lr ** 2
                if curvature > 0:
                    best = slope_last / curvature
                else:  # no curvature seen: grow while f falls, shrink when it rose
                    best = lr * (self.MAX_CHANGE if change < 0 else 1 / self.MAX_CHANGE)
                ratio = min(max(best / lr, 1 / self.MAX_CHANGE), self.MAX_CHANGE)
                lr *= math.sqrt(ratio)
        self._last = (f, slope)
        return lr


def secant_applies(estimator: Estimator, module: Module) -> bool:
    """Whether ĝ = Σ sᵢuᵢ / scale still holds at the update: an estimator with difference
    scalars (RGE, CGE) and modules that only shape directions or observe values."""
    return isinstance(estimator, RGE | CGE) and not any(
        acts_at(module, hook) for hook in ("scalars", "gradient", "update"))


def repeat_differs(objective: Objective, x: torch.Tensor) -> bool:
    """Whether two evaluations of x (d,) differ by more than rounding (relative
    ``REPEAT_TOLERANCE``; rows of one batch may be summed in different orders). Costs 2
    queries in one batch, counted."""
    first, second = objective(torch.stack([x, x])).tolist()
    return abs(first - second) > REPEAT_TOLERANCE * max(abs(first), abs(second), 1e-300)
