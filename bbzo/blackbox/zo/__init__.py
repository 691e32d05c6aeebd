"""Zeroth-order optimisation: estimators (one pipeline, per row of a batch), composable
modules, update rules, minimize, the autograd bridge, seeded in-place perturbation of torch
modules, population search."""

from bbzo.blackbox.zo.bridge import ZOFunction, zo_function
from bbzo.blackbox.zo.es import EvolutionStrategy, centered_ranks
from bbzo.blackbox.zo.estimators import CGE, RGE, Estimator, RankEstimator, make_estimator
from bbzo.blackbox.zo.minimize import OptimizeResult, estimate_gradient, minimize
from bbzo.blackbox.zo.modules import (
    MODULES,
    antithetic,
    blockwise,
    centered_rank,
    clip_scalars,
    history_subspace,
    hizoo,
    low_rank,
    magnitude_mask,
    make_module,
    orthogonal,
    random_mask,
    standardize,
)
from bbzo.blackbox.zo.objective import Objective
from bbzo.blackbox.zo.population import (
    AskTell,
    GeneticAlgorithm,
    gaussian_mutation,
    population_minimize,
    resample_mutation,
    row_crossover,
    uniform_crossover,
)
from bbzo.blackbox.zo.seeded import (
    SeededPerturbation,
    SeededZO,
    StepRecord,
    replay,
    seeded_normal,
    zo_step,
)
from bbzo.blackbox.zo.transforms import Chain, Context, Module, Probe, chain
from bbzo.blackbox.zo.update import adam, momentum, sign

__all__ = [
    "CGE", "MODULES", "RGE", "AskTell", "Chain", "Context", "Estimator", "EvolutionStrategy",
    "GeneticAlgorithm", "Module", "Objective", "OptimizeResult", "Probe", "RankEstimator", "adam",
    "antithetic", "blockwise", "centered_rank", "centered_ranks", "chain", "clip_scalars",
    "estimate_gradient",
    "gaussian_mutation", "hizoo", "history_subspace", "low_rank", "magnitude_mask",
    "make_estimator", "make_module", "minimize", "momentum", "orthogonal", "population_minimize",
    "random_mask",
    "resample_mutation", "row_crossover", "sign", "standardize", "uniform_crossover",
    "ZOFunction", "zo_function",
    "SeededPerturbation", "SeededZO", "StepRecord", "replay", "seeded_normal", "zo_step",
]
