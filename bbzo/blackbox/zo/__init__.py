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
from bbzo.blackbox.zo.noise import NoiseGenerator, NoiseTable
from bbzo.blackbox.zo.objective import Objective
from bbzo.blackbox.zo.population import (
    AskTell,
    Brood,
    Child,
    GeneticAlgorithm,
    PopulationSearch,
    batched_crossover,
    batched_mutation,
    elite_parents,
    gaussian_mutation,
    initial_parents,
    population_minimize,
    resample_mutation,
    resample_rows,
    row_crossover,
    uniform_crossover,
    uniform_parents,
)
from bbzo.blackbox.zo.seeded import (
    SeededChain,
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
    "adam", "antithetic", "AskTell", "batched_crossover", "batched_mutation", "blockwise", "Brood",
    "centered_rank", "centered_ranks", "CGE", "Chain", "chain", "Child", "clip_scalars", "Context",
    "elite_parents", "estimate_gradient", "Estimator", "EvolutionStrategy", "gaussian_mutation",
    "GeneticAlgorithm", "history_subspace", "hizoo", "initial_parents", "low_rank",
    "magnitude_mask", "make_estimator", "make_module", "minimize", "Module", "MODULES", "momentum",
    "NoiseGenerator", "NoiseTable", "Objective", "OptimizeResult", "orthogonal",
    "population_minimize", "PopulationSearch",
    "Probe", "random_mask", "RankEstimator", "replay", "resample_mutation", "resample_rows", "RGE",
    "row_crossover", "seeded_normal", "SeededChain", "SeededPerturbation", "SeededZO", "sign",
    "standardize", "StepRecord", "uniform_crossover", "uniform_parents", "zo_function", "zo_step",
    "ZOFunction",
]
