"""The two private mechanisms: Gaussian noise on a workload's answers and Gumbel top-K
selection (K peeling exponential mechanisms in one draw). Each charges the ledger first and
draws noise only once the charge is accepted."""

from __future__ import annotations

import numpy as np

from bbzo.checks import int_at_least
from bbzo.errors import InputError
from bbzo.privacy.gsd.accounting import PrivacyLedger, exponential_epsilon, gaussian_sigma


def gaussian_measure(answers: np.ndarray, *, sensitivity: float, rho: float,
                     ledger: PrivacyLedger, workload: str,
                     rng: np.random.Generator) -> np.ndarray:
    """``answers`` + N(0, σ²) noise per entry, σ = sensitivity/√(2ρ), charged as one
    Gaussian mechanism of ``rho`` on ``workload`` (a label)."""
    sigma = gaussian_sigma(rho, sensitivity)
    ledger.charge("gaussian", workload, rho, sigma)
    return answers + rng.normal(0.0, sigma, np.shape(answers))


def gumbel_top_k(scores: np.ndarray, k: int, *, sensitivity: float, rho: float,
                 ledger: PrivacyLedger, workload: str, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``k`` highest ``scores`` after Gumbel noise: the same distribution as k
    exponential mechanisms in turn, each ε₀ = √(8ρ/k)-DP with utility sensitivity
    ``sensitivity``, so ρ-zCDP in all (charged once, as "exponential", before the draw)."""
    scores = np.asarray(scores, dtype=np.float64)
    k = int_at_least("k", k)
    if k > scores.size:
        raise InputError(f"cannot select {k} of {scores.size} candidates; lower k")
    epsilon = exponential_epsilon(rho / k)
    ledger.charge("exponential", workload, rho)
    noisy = scores + rng.gumbel(0.0, 2.0 * sensitivity / epsilon, scores.shape)
    return np.argsort(-noisy, kind="stable")[:k]
