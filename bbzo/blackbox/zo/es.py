"""Evolution strategies (OpenAI-ES / NES) with antithetic sampling, in the ask/tell shape of
``population`` (``population_minimize`` drives them under a query budget)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bbzo.blackbox.zo.objective import as_vector
from bbzo.blackbox.zo.population import AskTell
from bbzo.blackbox.zo.transforms import Context, Module, chain
from bbzo.blackbox.zo.update import METHODS, method_tail
from bbzo.checks import int_at_least, positive
from bbzo.errors import InputError


def centered_ranks(losses: torch.Tensor) -> torch.Tensor:
    """Centred-rank fitness shaping: rank/(n−1) − ½ per loss, ties sharing their mean rank.

    Args:
        losses: (n,) values, n >= 2.

    Returns:
        (n,) weights in [−0.5, 0.5] summing to zero; the highest loss gets +0.5.
    """
    n = losses.numel()
    ordered = torch.sort(losses).values
    below = torch.searchsorted(ordered, losses, right=False)
    not_above = torch.searchsorted(ordered, losses, right=True)
    rank = (below + not_above - 1).to(losses.dtype) / 2
    return rank / (n - 1) - 0.5


def _standardized(losses: torch.Tensor) -> torch.Tensor:
    std = losses.std()
    return (losses - losses.mean()) / std if std > 0 else torch.zeros_like(losses)


SHAPINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "centered_rank": centered_ranks,
    "standardize": _standardized,
    "none": lambda losses: losses,
}
OPTIMIZERS = tuple(name.removeprefix("zo-") for name in METHODS)


class EvolutionStrategy(AskTell):
    """OpenAI-ES / NES with antithetic sampling on a vector x of shape (d,).

    Each generation draws ε_1..ε_{n/2} ~ N(0, I) and asks for the points m + σε_j (rows
    0..n/2−1) and m − σε_j (rows n/2..n−1). From the shaped losses w it estimates the gradient
    of the Gaussian-smoothed loss as g = Σ_i w_i ε_i / (nσ) (ε_i = ±ε_j) and steps
    m ← m − lr · update(g). With ``fitness_shaping="none"`` g is the unbiased antithetic
    estimate; the default centred ranks make it invariant to monotone changes of the loss.

    Evaluations per generation: ``population_size`` (+1 with ``evaluate_mean``).

    Args:
        x0: starting mean, shape (d,); numpy (or a list) in → numpy batches out, torch in →
            torch batches out (same dtype and device).
        sigma: perturbation scale, in the units of x.
        population_size: points per generation, even, >= 2.
        lr: step size.
        optimizer: "sgd", "momentum", "sign-sgd", "adam" (the engine's update rules) or a
            ``Module``/chain applied to g.
        fitness_shaping: "centered_rank", "standardize" (z-scores) or "none" (raw losses).
        evaluate_mean: also ask for the current mean, as the last row (one more query per
            generation), so that ``best`` holds a measured value at the iterate.
        seed: seeds the torch generator that draws ε.

    Attributes:
        mean: current mean, a (d,) tensor.
        grad: the last raw estimate g (before the update rule), or None.
    """

    def __init__(self, x0: Any, *, sigma: float, population_size: int = 20, lr: float = 0.1,
                 optimizer: str | Module = "sgd", fitness_shaping: str = "centered_rank",
                 evaluate_mean: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.mean, self.numpy_io = as_vector(x0)
        self.sigma = positive("sigma", sigma)
        self.lr = positive("lr", lr)
        self.population_size = int_at_least("population_size", population_size, 2)
        if self.population_size % 2:
            raise InputError(f"population_size must be even for antithetic pairs, got "
                             f"{population_size}; use {population_size + 1}")
        if fitness_shaping not in SHAPINGS:
            raise InputError(f"unknown fitness_shaping {fitness_shaping!r}; choose one of "
                             f"{', '.join(SHAPINGS)}")
        self.fitness_shaping = fitness_shaping
        if isinstance(optimizer, Module):
            self.update = optimizer
        elif optimizer in OPTIMIZERS:
            self.update = chain(*method_tail(f"zo-{optimizer}"))
        else:
            raise InputError(f"unknown optimizer {optimizer!r}; choose one of "
                             f"{', '.join(OPTIMIZERS)} or pass a bbzo Module")
        self.evaluate_mean = bool(evaluate_mean)
        self.seed = seed
        self.generator = torch.Generator(device=self.mean.device).manual_seed(int(seed))
        self.update_state = self.update.init(self.mean)
        self.grad: torch.Tensor | None = None
        self._eps: torch.Tensor | None = None

    @property
    def ask_size(self) -> int:
        return self.population_size + self.evaluate_mean

    def _propose(self) -> Any:
        self._eps = torch.randn(self.population_size // 2, self.mean.numel(),
                                generator=self.generator, dtype=self.mean.dtype,
                                device=self.mean.device)
        points = [self.mean + self.sigma * self._eps, self.mean - self.sigma * self._eps]
        if self.evaluate_mean:
            points.append(self.mean[None])
        X = torch.cat(points)
        return X.cpu().numpy() if self.numpy_io else X

    def _candidate(self, batch: Any, i: int) -> Any:
        return batch[i].copy() if self.numpy_io else batch[i].clone()

    def _update(self, batch: Any, losses: torch.Tensor) -> None:
        half = self.population_size // 2
        y = losses[:self.population_size].to(device=self.mean.device, dtype=self.mean.dtype)
        w = SHAPINGS[self.fitness_shaping](y)
        self.grad = (w[:half] - w[half:]) @ self._eps / (self.population_size * self.sigma)
        ctx = Context(x=self.mean, step=self.generation, generator=self.generator,
                      mu=self.sigma)
        step, self.update_state = self.update.gradient(self.grad, self.update_state, ctx)
        self.mean = self.mean - self.lr * step
        self._eps = None

    def _config(self) -> dict:
        return {"dim": self.mean.numel(), "sigma": self.sigma, "lr": self.lr,
                "population_size": self.population_size, "update": repr(self.update),
                "fitness_shaping": self.fitness_shaping, "evaluate_mean": self.evaluate_mean,
                "seed": self.seed}

    def _extra_state(self) -> dict:
        return {"mean": self.mean, "update_state": self.update_state, "grad": self.grad,
                "eps": self._eps, "rng": self.generator.get_state()}

    def _load_extra_state(self, state: dict) -> None:
        self.mean = state["mean"]
        self.update_state = state["update_state"]
        self.grad = state["grad"]
        self._eps = state["eps"]
        self.generator.set_state(state["rng"])
