"""Zeroth-order optimisation: estimators, composable modules, update rules, minimize,
seeded in-place perturbation of torch modules, population search."""

from bbzo.blackbox.zo.es import EvolutionStrategy, centered_ranks
from bbzo.blackbox.zo.estimators import CGE, RGE, Estimator, RankEstimator, make_estimator
from bbzo.blackbox.zo.minimize import OptimizeResult, estimate_gradient, minimize
from bbzo.blackbox.zo.modules import (
    MODULES,
    antithetic,
    blockwise,
    clip_scalars,
    history_subspace,
    hizoo,
    low_rank,
    magnitude_mask,
    make_module,
    orthogonal,
    random_mask,
)
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
    "antithetic", "blockwise", "centered_ranks", "chain", "clip_scalars", "estimate_gradient",
    "gaussian_mutation", "hizoo", "history_subspace", "low_rank", "magnitude_mask",
    "make_estimator", "make_module", "minimize", "momentum", "orthogonal", "population_minimize",
    "random_mask",
    "resample_mutation", "row_crossover", "sign", "uniform_crossover",
    "Brood", "Child", "PopulationSearch", "batched_crossover", "batched_mutation",
    "elite_parents", "initial_parents", "resample_rows", "uniform_parents",
    "SeededPerturbation", "SeededZO", "StepRecord", "replay", "seeded_normal", "zo_step",
]
