"""Zeroth-order optimisation: estimators, composable modules, update rules, minimize,
seeded in-place perturbation of torch modules, population search."""

from bbzo.blackbox.zo.estimators import CGE, RGE, Estimator, RankEstimator, make_estimator
from bbzo.blackbox.zo.minimize import OptimizeResult, estimate_gradient, minimize
from bbzo.blackbox.zo.objective import Objective
from bbzo.blackbox.zo.transforms import Chain, Context, Module, Probe, chain
from bbzo.blackbox.zo.update import adam, momentum, sign

__all__ = [
    "CGE", "RGE", "Chain", "Context", "Estimator", "Module", "Objective", "OptimizeResult",
    "Probe", "RankEstimator", "adam", "chain", "estimate_gradient", "make_estimator", "minimize",
    "momentum", "sign",
]
