"""Privacy accounting in ρ-zero-concentrated DP (zCDP) and the ledger that enforces a budget.

Conversions: the Gaussian mechanism with ℓ2 sensitivity Δ and noise σ is ρ-zCDP with
ρ = Δ²/(2σ²); the ε₀-DP exponential mechanism is ε₀²/8-zCDP; ρ's add under composition; ρ-zCDP
implies (ε, δ)-DP with ε from the Canonne–Kamath–Steinke bound (Proposition 1.3 of
"The Discrete Gaussian for Differential Privacy", 2020):

    ε(ρ, δ) = min over α > 1 of  αρ + (log(1/δ) + (α−1)·log(1 − 1/α) − log α) / (α − 1).

Its derivative in α is ρ + log(αδ)/(α−1)², increasing in α, so the minimiser is the root found by
bisection. ``rho_from_epsilon`` inverts the bound by bisection on ρ (ε is increasing in ρ).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass

from bbzo.checks import non_negative, positive
from bbzo.errors import InputError, PrivacyBudgetExceeded
from bbzo.runs import RunFolder

LEDGER_FILE = "privacy_ledger.jsonl"
_SLACK = 1e-12  # relative tolerance when comparing sums of ρ against the budget


def check_delta(delta: float) -> float:
    """δ as a float in the open interval (0, 1)."""
    value = positive("delta", delta)
    if not value < 1.0:
        raise InputError(f"delta must be in (0, 1), got {delta!r}; use e.g. 1/N² for N rows")
    return value


def gaussian_sigma(rho: float, sensitivity: float) -> float:
    """Noise standard deviation σ = Δ/√(2ρ) of the ρ-zCDP Gaussian mechanism."""
    return positive("sensitivity", sensitivity) / math.sqrt(2.0 * positive("rho", rho))


def gaussian_rho(sigma: float, sensitivity: float) -> float:
    """ρ = Δ²/(2σ²) spent by Gaussian noise σ on a query of ℓ2 sensitivity Δ."""
    return positive("sensitivity", sensitivity) ** 2 / (2.0 * positive("sigma", sigma) ** 2)


def exponential_rho(epsilon: float) -> float:
    """ρ = ε₀²/8 of the ε₀-DP exponential mechanism."""
    return positive("epsilon", epsilon) ** 2 / 8.0


def exponential_epsilon(rho: float) -> float:
    """ε₀ = √(8ρ): the exponential mechanism that spends exactly ρ."""
    return math.sqrt(8.0 * positive("rho", rho))


def compose(*rhos: float) -> float:
    """ρ of running mechanisms of the given ρ's one after another (they add)."""
    return float(sum(non_negative("rho", r) for r in rhos))


def epsilon_from_rho(rho: float, delta: float) -> float:
    """Smallest ε such that ρ-zCDP implies (ε, δ)-DP, by the CKS bound (ε ≥ 0)."""
    rho, delta = non_negative("rho", rho), check_delta(delta)
    if rho == 0.0:
        return 0.0

    def slope(alpha: float) -> float:
        return rho + math.log(alpha * delta) / (alpha - 1.0) ** 2

    low, high = 1.0, 2.0
    while slope(high) < 0.0:
        low, high = high, 2.0 * high
    for _ in range(200):
        mid = 0.5 * (low + high)
        if mid in (low, high):
            break
        low, high = (mid, high) if slope(mid) < 0.0 else (low, mid)
    alpha = high
    eps = alpha * rho + (math.log(1.0 / delta) + (alpha - 1.0) * math.log1p(-1.0 / alpha)
                         - math.log(alpha)) / (alpha - 1.0)
    return max(0.0, eps)


def rho_from_epsilon(epsilon: float, delta: float) -> float:
    """Largest ρ whose ρ-zCDP guarantee implies (ε, δ)-DP (the inverse of
    ``epsilon_from_rho``, by bisection to float precision)."""
    epsilon, delta = positive("epsilon", epsilon), check_delta(delta)
    low, high = 0.0, max(1.0, epsilon)
    while epsilon_from_rho(high, delta) < epsilon:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if mid in (low, high):
            break
        low, high = (mid, high) if epsilon_from_rho(mid, delta) <= epsilon else (low, mid)
    return low


@dataclass(frozen=True)
class Charge:
    """One privacy charge: ``mechanism`` ("gaussian", "exponential"), the ``workload`` it
    answered or selected from (a label), its ``rho`` and, for the Gaussian, its ``sigma``."""

    mechanism: str
    workload: str
    rho: float
    sigma: float | None = None


class PrivacyLedger:
    """Every charge against a ρ-zCDP budget, refused before it would overspend.

    Call ``charge`` *before* drawing the noise: it raises ``PrivacyBudgetExceeded`` and records
    nothing when the charge does not fit. With a run folder, each charge is appended to
    ``privacy_ledger.jsonl`` (one JSON object per line: mechanism, workload, rho, sigma,
    spent) as it is made.

    Args:
        rho: the total budget ρ > 0.
        run: run folder for the JSONL record, or None (memory only).
    """

    def __init__(self, rho: float, run: RunFolder | None = None) -> None:
        self.budget = positive("rho", rho)
        self.run = run
        self.charges: list[Charge] = []

    @classmethod
    def restore(cls, rho: float, run: RunFolder) -> PrivacyLedger:
        """The ledger of a resumed fit: every charge already in ``run``'s
        ``privacy_ledger.jsonl`` counts against the budget ``rho`` again (not re-written),
        so a resumed fit can never spend more than ``rho`` in all."""
        ledger = cls(rho, run)
        ledger.charges = [Charge(r["mechanism"], r["workload"], float(r["rho"]), r.get("sigma"))
                          for r in run.read_jsonl(LEDGER_FILE)]
        if ledger.spent > ledger.budget * (1.0 + _SLACK):
            raise PrivacyBudgetExceeded(
                f"the run's ledger already holds rho={ledger.spent:.6g}, more than this fit's "
                f"rho={ledger.budget:.6g}; resume with the same epsilon and delta")
        return ledger

    @property
    def spent(self) -> float:
        """Total ρ charged so far."""
        return compose(*(c.rho for c in self.charges))

    @property
    def remaining(self) -> float:
        """ρ still available (≥ 0)."""
        return max(0.0, self.budget - self.spent)

    def charge(self, mechanism: str, workload: str, rho: float,
               sigma: float | None = None) -> Charge:
        """Record one charge of ``rho`` (refused, nothing recorded, if it overspends)."""
        rho = positive("rho", rho)
        if self.spent + rho > self.budget * (1.0 + _SLACK):
            raise PrivacyBudgetExceeded(
                f"{mechanism} on {workload} needs rho={rho:.6g} but only {self.remaining:.6g} "
                f"of rho={self.budget:.6g} is left; spend less per mechanism or raise epsilon")
        charge = Charge(mechanism, workload, rho, sigma)
        self.charges.append(charge)
        if self.run is not None:
            self.run.append_jsonl(LEDGER_FILE, {**asdict(charge), "spent": self.spent})
        return charge

    def by_mechanism(self) -> dict[str, float]:
        """ρ spent per mechanism."""
        totals: dict[str, float] = defaultdict(float)
        for c in self.charges:
            totals[c.mechanism] += c.rho
        return dict(totals)
