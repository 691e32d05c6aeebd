"""Evolution strategies (OpenAI-ES / NES) with antithetic sampling, in the ask/tell shape of
``population`` (``population_minimize`` drives them under a query budget). A generation runs the
engine's estimate pipeline (``estimators.ask_rows`` / ``tell_rows``) with the same modules as
``minimize``, split at the query: ``ask`` builds the batch, ``tell`` finishes the estimate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from bbzo.blackbox.zo.estimators import RGE, Asked, ask_rows, tell_rows
from bbzo.blackbox.zo.modules import Antithetic, centered_rank, centered_ranks, standardize
from bbzo.blackbox.zo.objective import as_vector
from bbzo.blackbox.zo.population import AskTell
from bbzo.blackbox.zo.transforms import Context, Module, chain
from bbzo.blackbox.zo.update import METHODS, method_tail
from bbzo.checks import int_at_least, positive
from bbzo.errors import InputError

__all__ = ["EvolutionStrategy", "centered_ranks"]

SHAPINGS = {"centered_rank": centered_rank, "standardize": standardize, "none": None}
OPTIMIZERS = tuple(name.removeprefix("zo-") for name in METHODS)


def _chain(optimizer: str | Module, modules: Module | Sequence[Module],
           fitness_shaping: str) -> Module:
    """shaping module, then the caller's modules (``antithetic`` dropped: the population is
    antithetic by construction), then the update rule."""
    given = [modules] if isinstance(modules, Module) else list(modules)
    if isinstance(optimizer, Module):
        given, tail = [*given, optimizer], ()
    elif optimizer in OPTIMIZERS:
        tail = method_tail(f"zo-{optimizer}")
    else:
        raise InputError(f"unknown optimizer {optimizer!r}; choose one of "
                         f"{', '.join(OPTIMIZERS)} or pass a bbzo Module")
    body = chain(*given)
    if tail and body.is_update_rule:
        raise InputError(f"optimizer={optimizer!r} adds {tail[0]!r} and the modules hold another "
                         f"update rule; keep one")
    if fitness_shaping not in SHAPINGS:
        raise InputError(f"unknown fitness_shaping {fitness_shaping!r}; choose one of "
                         f"{', '.join(SHAPINGS)}")
    shaping = SHAPINGS[fitness_shaping]
    if shaping is not None and body.replaces_scalars:
        raise InputError(f"fitness shaping given twice (fitness_shaping={fitness_shaping!r} and a "
                         f"module): pass fitness_shaping='none' to use the module")
    head = () if shaping is None else (shaping(),)
    return chain(*head, *(m for m in body.modules if not isinstance(m, Antithetic)), *tail)


class EvolutionStrategy(AskTell):
    """OpenAI-ES / NES with antithetic sampling on a vector x of shape (d,).

    Each generation draws ε_1..ε_k ~ N(0, I) (k = n/2) and asks for the points m + σε_j (rows
    0..k−1) and m − σε_j (rows k..n−1): RGE central differences with q = k, μ = σ. From the
    (shaped) losses it forms the scalars s_j = (w₊ⱼ − w₋ⱼ)/(2σ), so ĝ = Σ_j s_j ε_j / k is the
    estimate of the gradient of the Gaussian-smoothed loss, and steps m ← m − lr · update(ĝ).
    With ``fitness_shaping="none"`` ĝ is the unbiased antithetic estimate; the default centred
    ranks (the ``centered_rank()`` module) make it invariant to monotone changes of the loss.

    Modules act as in ``minimize`` (masks, orthogonal, low-rank and HiZOO on the directions,
    shaping then clipping on the scalars, history subspace on ĝ, one update rule).
    ``antithetic()`` states what ES always does: the population is ± pairs by construction, so
    it is accepted and not applied a second time.

    Evaluations per generation: ``population_size`` (+1 with ``evaluate_mean`` or a module
    that needs f(m), e.g. ``hizoo()``).

    Args:
        x0: starting mean, shape (d,); numpy (or a list) in → numpy batches out, torch in →
            torch batches out (same dtype and device).
        sigma: perturbation scale, in the units of x.
        population_size: points per generation, even, >= 2.
        lr: step size.
        optimizer: "sgd", "momentum", "sign-sgd", "adam" (the engine's update rules) or a
            ``Module``/chain, every module of which is applied.
        modules: more modules (``bbzo.blackbox.zo.modules``), applied before the update rule.
        fitness_shaping: "centered_rank", "standardize" (z-scores) or "none" (raw losses); put
            first in the chain. With "none" a shaping module may come in ``modules``.
        evaluate_mean: also ask for the current mean, as the last row (one more query per
            generation), so that ``best`` holds a measured value at the iterate.
        seed: seeds the torch generator that draws ε.

    Attributes:
        mean: current mean, a (d,) tensor.
        grad: the last estimate ĝ (before the update rule), or None.
        module: the chain run each generation.
    """

    def __init__(self, x0: Any, *, sigma: float, population_size: int = 20, lr: float = 0.1,
                 optimizer: str | Module = "sgd", modules: Module | Sequence[Module] = (),
                 fitness_shaping: str = "centered_rank", evaluate_mean: bool = False,
                 seed: int = 0) -> None:
        super().__init__()
        self.mean, self.numpy_io = as_vector(x0)
        self.sigma = positive("sigma", sigma)
        self.lr = positive("lr", lr)
        self.population_size = int_at_least("population_size", population_size, 2)
        if self.population_size % 2:
            raise InputError(f"population_size must be even for antithetic pairs, got "
                             f"{population_size}; use {population_size + 1}")
        self.fitness_shaping = fitness_shaping
        self.module = _chain(optimizer, modules, fitness_shaping)
        self.evaluate_mean = bool(evaluate_mean)
        self._center = self.evaluate_mean or self.module.needs_center
        self._estimator = RGE(q=self.population_size // 2, mu=self.sigma)
        self.seed = seed
        self.generator = torch.Generator(device=self.mean.device).manual_seed(int(seed))
        self.module_state = self.module.init(self.mean)
        self.grad: torch.Tensor | None = None
        self._eps: torch.Tensor | None = None  # this generation's directions (after the hooks)
        self._asked_state: Any = None           # module state after the directions hooks

    @property
    def ask_size(self) -> int:
        return self.population_size + self._center

    def _context(self) -> Context:
        return Context(x=self.mean, step=self.generation, generator=self.generator,
                       mu=self.sigma)

    def _propose(self) -> Any:
        x = self.mean[None]
        asked = ask_rows(x, self._estimator.draw(x, self.generator), self.module,
                         [self.module_state], [self._context()], central=True,
                         center=self._center)
        self._eps, self._asked_state = asked.directions[0], asked.states[0]
        X = asked.points
        return X.cpu().numpy() if self.numpy_io else X

    def _candidate(self, batch: Any, i: int) -> Any:
        return batch[i].copy() if self.numpy_io else batch[i].clone()

    def _update(self, batch: Any, losses: torch.Tensor) -> None:
        ctx = self._context()
        asked = Asked(torch.as_tensor(batch), self._eps[None], [self._asked_state], [ctx],
                      central=True, center=self._center)
        y = losses.to(device=self.mean.device, dtype=self.mean.dtype)
        g, states, _ = tell_rows(asked, y, self.module, self._estimator.raw_scalars,
                                 scale=self._estimator.scale)
        self.grad = g[0]
        step, self.module_state = self.module.update(self.grad, states[0], ctx)
        self.mean = self.mean - self.lr * step
        self._eps = self._asked_state = None

    def _config(self) -> dict:
        return {"dim": self.mean.numel(), "sigma": self.sigma, "lr": self.lr,
                "population_size": self.population_size, "module": repr(self.module),
                "fitness_shaping": self.fitness_shaping, "evaluate_mean": self.evaluate_mean,
                "seed": self.seed}

    def _extra_state(self) -> dict:
        return {"mean": self.mean, "module_state": self.module_state, "grad": self.grad,
                "eps": self._eps, "asked_state": self._asked_state,
                "rng": self.generator.get_state()}

    def _load_extra_state(self, state: dict) -> None:
        self.mean = state["mean"]
        self.module_state = state["module_state"]
        self.grad = state["grad"]
        self._eps = state["eps"]
        self._asked_state = state["asked_state"]
        self.generator.set_state(state["rng"])
