"""ρ-zCDP accounting: conversions, composition and the privacy ledger."""

import json
import math

import pytest

from bbzo.errors import InputError, PrivacyBudgetExceeded
from bbzo.privacy.gsd.accounting import (
    LEDGER_FILE,
    PrivacyLedger,
    compose,
    epsilon_from_rho,
    exponential_epsilon,
    exponential_rho,
    gaussian_rho,
    gaussian_sigma,
    rho_from_epsilon,
)
from bbzo.runs import RunFolder


def test_cks_reference_vector():
    assert epsilon_from_rho(0.03125, 1e-3) == pytest.approx(0.6880024554878086, abs=1e-9)


def test_cks_is_below_the_simple_bound_and_inverts():
    for rho, delta in [(0.001, 1e-6), (0.1, 1e-5), (2.0, 1e-9)]:
        eps = epsilon_from_rho(rho, delta)
        assert 0 < eps < rho + 2 * math.sqrt(rho * math.log(1 / delta))
        assert rho_from_epsilon(eps, delta) == pytest.approx(rho, rel=1e-9)
    assert epsilon_from_rho(0.0, 1e-5) == 0.0


def test_cks_against_opendp():
    dp = pytest.importorskip("opendp.prelude", reason="opendp not installed (optional)")
    dp.enable_features("contrib")
    gaussian = dp.m.make_gaussian(dp.atom_domain(T=float, nan=False),
                                  dp.absolute_distance(T=float), scale=2.0)
    curve = dp.c.make_zCDP_to_approxDP(gaussian).map(1.0)  # ρ = 1² / (2·2²) = 0.125
    for delta in (1e-3, 1e-6):
        assert curve.epsilon(delta) == pytest.approx(epsilon_from_rho(0.125, delta), rel=1e-9)


def test_gaussian_and_exponential_conversions():
    assert gaussian_sigma(0.5, math.sqrt(2)) == pytest.approx(math.sqrt(2) / 1.0)
    assert gaussian_sigma(0.02, 3.0) == pytest.approx(3.0 / math.sqrt(0.04))
    assert gaussian_rho(gaussian_sigma(0.37, 0.01), 0.01) == pytest.approx(0.37)
    assert exponential_rho(2.0) == pytest.approx(0.5)
    assert exponential_rho(exponential_epsilon(0.3)) == pytest.approx(0.3)
    assert compose(0.1, 0.2, 0.05) == pytest.approx(0.35)
    with pytest.raises(InputError):
        gaussian_sigma(0.0, 1.0)
    with pytest.raises(InputError, match="delta"):
        epsilon_from_rho(0.1, 1.0)


def test_ledger_records_and_refuses_overspend(tmp_path):
    run = RunFolder(tmp_path / "run")
    ledger = PrivacyLedger(1.0, run)
    ledger.charge("gaussian", "age,sex", 0.4, sigma=0.1)
    ledger.charge("exponential", "select round 1", 0.5)
    with pytest.raises(PrivacyBudgetExceeded, match="rho"):
        ledger.charge("gaussian", "race,sex", 0.2, sigma=0.1)
    assert ledger.spent == pytest.approx(0.9)
    assert ledger.remaining == pytest.approx(0.1)
    ledger.charge("gaussian", "race,sex", 0.1, sigma=0.2)  # exactly the rest fits
    lines = (run.path / LEDGER_FILE).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["workload"] for r in records] == ["age,sex", "select round 1", "race,sex"]
    assert records[0] == {"mechanism": "gaussian", "workload": "age,sex", "rho": 0.4,
                          "sigma": 0.1, "spent": 0.4}
    assert ledger.by_mechanism() == pytest.approx({"gaussian": 0.5, "exponential": 0.5})
