"""Population search with an ask/tell interface: the ``AskTell`` base, a genetic algorithm, and
``population_minimize`` (the budgeted loop). The evolution strategy lives in ``es``.

Optimisers work by generations: ``ask()`` returns a batch of candidates, the caller
evaluates them and passes the losses back with ``tell(batch, losses)`` (minimisation).
``ask_size`` says how many evaluations the next batch needs; ``best`` is the best
(candidate, loss) measured so far; ``state_dict()`` / ``load_state_dict()`` save and restore
everything, random state included, so a resumed run continues exactly as an uninterrupted one.
``population_minimize`` runs the loop under a query budget.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from bbzo.blackbox.budget import Budget, as_budget
from bbzo.blackbox.zo.minimize import OptimizeResult
from bbzo.blackbox.zo.objective import check_values
from bbzo.checks import int_at_least, positive
from bbzo.errors import BudgetExceeded, InputError

Mutation = Callable[[Any, np.random.Generator], Any]
Crossover = Callable[[Any, Any, np.random.Generator], Any]


class AskTell(ABC):
    """What every population optimiser shares: the pending batch, the generation counter, the
    best measured candidate and the saved state. Subclasses implement ``_propose``, ``_update``,
    ``_candidate`` and the ``_extra_state`` pair.

    Attributes:
        generation: number of completed ``tell`` calls.
    """

    def __init__(self) -> None:
        self.generation = 0
        self._pending: Any = None
        self._best: tuple[Any, float] | None = None

    @property
    @abstractmethod
    def ask_size(self) -> int:
        """Evaluations (objective queries) the next ``ask()`` batch needs."""

    @property
    def best(self) -> tuple[Any, float] | None:
        """(candidate, loss) with the lowest loss told so far, or None before the first tell."""
        return self._best

    def ask(self) -> Any:
        """The next batch to evaluate. While a batch awaits ``tell`` (also after
        ``load_state_dict``), returns that same batch again."""
        if self._pending is None:
            self._pending = self._propose()
        return self._pending

    def tell(self, batch: Any, losses: Any) -> None:
        """Report the losses (shape (n,), finite) of the batch the last ``ask()`` returned."""
        if self._pending is None or batch is not self._pending:
            raise InputError("tell() takes the very batch the last ask() returned (same object) "
                             "and its losses; call ask() first")
        y = check_values(losses, self.ask_size)
        i = int(torch.argmin(y))
        if self._best is None or float(y[i]) < self._best[1]:
            self._best = (self._candidate(batch, i), float(y[i]))
        self._update(batch, y)
        self._pending = None
        self.generation += 1

    def state_dict(self) -> dict:
        """A deep copy of the whole state (picklable; ``torch.save`` works)."""
        state = {"config": self._config(), "generation": self.generation,
                 "pending": self._pending, "best": self._best, **self._extra_state()}
        return copy.deepcopy(state)

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()`` taken from an optimiser built with the same arguments."""
        if not isinstance(state, dict) or "config" not in state:
            raise InputError("load_state_dict takes the dict that state_dict() returned")
        if state["config"] != self._config():
            raise InputError(f"state_dict was saved by an optimiser built with "
                             f"{state['config']}, this one has {self._config()}; build it with "
                             f"the same arguments")
        state = copy.deepcopy(state)
        self.generation = state["generation"]
        self._pending = state["pending"]
        self._best = state["best"]
        self._load_extra_state(state)

    @abstractmethod
    def _config(self) -> dict:
        """The constructor arguments a saved state must match."""

    @abstractmethod
    def _propose(self) -> Any:
        """A new batch of ``ask_size`` candidates."""

    @abstractmethod
    def _candidate(self, batch: Any, i: int) -> Any:
        """Candidate ``i`` of ``batch`` as an object ``best`` may keep (not a view)."""

    @abstractmethod
    def _update(self, batch: Any, losses: torch.Tensor) -> None:
        """Learn from the (n,) float64 losses of ``batch``."""

    @abstractmethod
    def _extra_state(self) -> dict:
        """The subclass's own entries of ``state_dict``."""

    @abstractmethod
    def _load_extra_state(self, state: dict) -> None:
        """Restore the entries ``_extra_state`` wrote."""


class GeneticAlgorithm(AskTell):
    """Elitist genetic algorithm over arbitrary candidates.

    Generation 0 evaluates the initial population. Every later generation keeps the
    ``elite_size`` best candidates seen so far unchanged (they are not re-evaluated) and asks
    for ``population_size - elite_size`` children: ``round(crossover_rate * children)`` of them
    ``crossover(a, b, rng)`` of two distinct elite members, the rest ``mutation(p, rng)`` of one
    (all children are mutations while the elite has a single member). Parents are drawn
    uniformly from the elite. Losses are assumed deterministic.

    Evaluations per generation: ``len(init)`` (a list) or ``population_size`` (a function) in
    generation 0, then ``population_size - elite_size``.

    Args:
        init: a list of initial candidates, or ``init_fn(rng) -> candidate`` called
            ``population_size`` times.
        population_size: elite plus children per generation, >= 2.
        elite_size: survivors per generation, 1 <= elite_size < population_size.
        mutation: ``mutation(parent, rng) -> child``; must return a new object and leave the
            parent untouched (see ``gaussian_mutation``, ``resample_mutation``).
        crossover: ``crossover(a, b, rng) -> child`` or None (mutation only); see
            ``uniform_crossover``, ``row_crossover``.
        crossover_rate: share of the children made by crossover, in [0, 1].
        seed: seeds the numpy generator handed to ``init``, ``mutation`` and ``crossover``.
    """

    def __init__(self, init: Sequence[Any] | Callable[[np.random.Generator], Any], *,
                 mutation: Mutation, population_size: int = 100, elite_size: int = 5,
                 crossover: Crossover | None = None, crossover_rate: float = 0.5,
                 seed: int = 0) -> None:
        super().__init__()
        self.population_size = int_at_least("population_size", population_size, 2)
        self.elite_size = int_at_least("elite_size", elite_size, 1)
        if self.elite_size >= self.population_size:
            raise InputError(f"elite_size ({elite_size}) must be smaller than population_size "
                             f"({population_size}) so that each generation has children")
        if not callable(mutation):
            raise InputError("mutation must be callable as mutation(parent, rng) -> child")
        if crossover is not None and not callable(crossover):
            raise InputError("crossover must be callable as crossover(a, b, rng) -> child, "
                             "or None")
        if not 0.0 <= crossover_rate <= 1.0:
            raise InputError(f"crossover_rate must be in [0, 1], got {crossover_rate!r}")
        if isinstance(init, (list, tuple)):
            if not init:
                raise InputError("init must hold at least one candidate")
            self._init: list[Any] | None = list(init)
        elif callable(init):
            self._init = None
        else:
            raise InputError(f"init must be a list of candidates or a function "
                             f"init_fn(rng) -> candidate, got {type(init).__name__}; wrap a "
                             f"single candidate as [x]")
        self.init_fn = init if self._init is None else None
        self.mutation = mutation
        self.crossover = crossover
        self.crossover_rate = float(crossover_rate) if crossover is not None else 0.0
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.elite: list[tuple[Any, float]] = []

    @property
    def ask_size(self) -> int:
        if self.generation > 0:
            return self.population_size - self.elite_size
        return self.population_size if self._init is None else len(self._init)

    def _propose(self) -> list[Any]:
        if self.generation == 0:
            if self._init is not None:
                return list(self._init)
            return [self.init_fn(self.rng) for _ in range(self.population_size)]
        n = self.ask_size
        n_cross = round(self.crossover_rate * n) if len(self.elite) >= 2 else 0
        children = []
        for k in range(n):
            if k < n_cross:
                i, j = self.rng.choice(len(self.elite), size=2, replace=False)
                children.append(self.crossover(self.elite[i][0], self.elite[j][0], self.rng))
            else:
                i = self.rng.integers(len(self.elite))
                children.append(self.mutation(self.elite[i][0], self.rng))
        return children

    def _candidate(self, batch: list[Any], i: int) -> Any:
        return batch[i]

    def _update(self, batch: list[Any], losses: torch.Tensor) -> None:
        pool = self.elite + list(zip(batch, losses.tolist(), strict=True))
        order = np.argsort([loss for _, loss in pool], kind="stable")
        self.elite = [pool[i] for i in order[:self.elite_size]]

    def _config(self) -> dict:
        return {"population_size": self.population_size, "elite_size": self.elite_size,
                "crossover_rate": self.crossover_rate, "seed": self.seed}

    def _extra_state(self) -> dict:
        return {"elite": self.elite, "rng": self.rng.bit_generator.state}

    def _load_extra_state(self, state: dict) -> None:
        self.elite = state["elite"]
        self.rng.bit_generator.state = state["rng"]


def population_minimize(fun: Callable[[Any], Any], optimizer: AskTell, *,
                        budget: Budget | int | None = None, generations: int | None = None,
                        callback: Callable[[dict], bool | None] | None = None) -> OptimizeResult:
    """Run ask/tell generations of ``optimizer`` on a batched objective under a query budget.

    A generation is asked only when the budget can afford all of it, so the budget is never
    exceeded and no batch is left half-evaluated. Resuming works: pass an optimiser restored
    with ``load_state_dict``.

    Args:
        fun: batched objective: ``fun(X)`` with X of shape (n, d) → (n,) for
            ``EvolutionStrategy``, ``fun(candidates)`` with a list of n candidates → (n,) for
            ``GeneticAlgorithm``. Each candidate is one query.
        optimizer: a ``GeneticAlgorithm`` or ``EvolutionStrategy``.
        budget: a ``Budget`` or a maximum number of queries; never exceeded.
        generations: most generations in this call. With neither ``budget`` nor
            ``generations``, 1000 generations.
        callback: called after each generation with its history dict; return True to stop.

    Returns:
        An ``OptimizeResult``: ``x``/``fun`` the best measured candidate and its loss,
        ``nqueries`` spent in this call, ``nit`` generations in this call, ``history`` one dict
        per generation (``nit``, ``nqueries``, ``loss`` = the generation's mean loss,
        ``best``, ``lr`` = the optimiser's step size, 0 for the GA), ``lr``.
    """
    if not callable(fun):
        raise InputError("fun must be callable as fun(batch) -> losses of shape (n,)")
    if not isinstance(optimizer, AskTell):
        raise InputError(f"optimizer must be a GeneticAlgorithm or an EvolutionStrategy, got "
                         f"{type(optimizer).__name__}")
    if callback is not None and not callable(callback):
        raise InputError("callback must be callable as callback(info_dict)")
    budget = as_budget(budget)
    if generations is None and budget.max_queries is None:
        generations = 1000
    if generations is not None:
        generations = int_at_least("generations", generations, 1)
    lr = float(getattr(optimizer, "lr", 0.0))
    history: list[dict] = []
    nqueries, nit = 0, 0
    message = f"maximum number of generations ({generations}) reached"
    while generations is None or nit < generations:
        n = optimizer.ask_size
        if not budget.can_afford(queries=n):
            message = (f"query budget exhausted: the next generation needs {n} queries, "
                       f"{budget.remaining_queries} left")
            break
        batch = optimizer.ask()
        try:
            budget.reserve(queries=n)
        except BudgetExceeded as err:
            message = str(err)
            break
        nqueries += n
        losses = check_values(fun(batch), n)
        optimizer.tell(batch, losses)
        nit += 1
        record = {"nit": nit, "nqueries": nqueries, "loss": float(losses.mean()),
                  "best": optimizer.best[1], "lr": lr}
        history.append(record)
        if callback is not None and callback(dict(record)):
            message = "stopped by callback"
            break
    if optimizer.best is None:
        raise BudgetExceeded(f"budget too small for one generation: {message}; raise it or "
                             f"lower population_size", nqueries=nqueries)
    x, loss = optimizer.best
    return OptimizeResult(x=x, fun=loss, nqueries=nqueries, nit=nit, history=history,
                          success=True, message=message, lr=lr)


def _numpy_op(op: Callable[..., np.ndarray]) -> Callable[..., Any]:
    """Let an operator written for numpy arrays take torch tensors too (same dtype/device out)."""

    def run(*args: Any) -> Any:
        *arrays, rng = args
        like = arrays[0]
        if not isinstance(like, torch.Tensor):
            return op(*(np.asarray(a) for a in arrays), rng)
        out = op(*(a.detach().cpu().numpy() for a in arrays), rng)
        return torch.as_tensor(out, dtype=like.dtype, device=like.device)

    return run


def _pick(name: str, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if k > n:
        raise InputError(f"{name}={k} is more than the candidate's {n}; lower {name}")
    return rng.choice(n, size=k, replace=False)


def gaussian_mutation(sigma: float, *, low: float | None = None,
                      high: float | None = None) -> Mutation:
    """Mutation adding N(0, sigma²) noise to every entry, then clipping to [low, high].

    Works on numpy arrays and torch tensors of any shape.
    """
    sigma = positive("sigma", sigma)

    def mutate(parent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        child = parent + sigma * rng.standard_normal(parent.shape)
        return child if low is None and high is None else np.clip(child, low, high)

    return _numpy_op(mutate)


def resample_mutation(domain_sizes: int | Sequence[int], *, entries: int | None = None,
                      rows: int | None = None) -> Mutation:
    """Mutation for integer/categorical arrays: redraw entries uniformly from their domain.

    An entry whose domain size is s takes a value in {0, ..., s−1} (possibly its old one).

    Args:
        domain_sizes: one size for every entry, or sizes broadcast against the candidate
            (e.g. one per column of an (N, m) data set: shape (m,)).
        entries: redraw this many distinct random entries (default 1).
        rows: instead redraw this many distinct whole rows (axis 0), every cell of each.
    """
    sizes = np.asarray(domain_sizes)
    if sizes.size == 0 or not np.issubdtype(sizes.dtype, np.integer) or (sizes < 1).any():
        raise InputError(f"domain_sizes must be positive integers, got {domain_sizes!r}")
    if entries is not None and rows is not None:
        raise InputError("give either entries or rows to resample_mutation, not both")
    count = int_at_least("rows" if rows is not None else "entries",
                          rows if rows is not None else (1 if entries is None else entries), 1)

    def mutate(parent: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        try:
            high = np.broadcast_to(sizes, parent.shape)
        except ValueError:
            raise InputError(f"domain_sizes of shape {sizes.shape} do not broadcast to a "
                             f"candidate of shape {parent.shape}") from None
        child = parent.copy()
        if rows is not None:
            index = _pick("rows", count, parent.shape[0], rng)
        else:
            index = np.unravel_index(_pick("entries", count, parent.size, rng), parent.shape)
        child[index] = rng.integers(0, high[index])
        return child

    return _numpy_op(mutate)


def uniform_crossover(p: float = 0.5) -> Crossover:
    """Crossover taking each entry from the first parent with probability ``p``, else from the
    second. Parents must have the same shape."""
    if not 0.0 <= p <= 1.0:
        raise InputError(f"p must be in [0, 1], got {p!r}")

    def cross(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if a.shape != b.shape:
            raise InputError(f"uniform_crossover needs parents of one shape, got {a.shape} "
                             f"and {b.shape}")
        return np.where(rng.random(a.shape) < p, a, b)

    return _numpy_op(cross)


def row_crossover(rows: int = 1, *, columns: int | None = None) -> Crossover:
    """Crossover copying ``rows`` random rows of the second parent over random rows of the
    first (rows along axis 0; positions drawn independently, as row order carries no meaning
    in a data set). With ``columns``, only that many random columns of those rows are copied.
    """
    rows = int_at_least("rows", rows, 1)
    if columns is not None:
        columns = int_at_least("columns", columns, 1)

    def cross(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if a.shape[1:] != b.shape[1:] or (columns is not None and a.ndim != 2):
            raise InputError(f"row_crossover needs parents with the same row shape (2-D with "
                             f"columns), got {a.shape} and {b.shape}")
        child = a.copy()
        dst = _pick("rows", rows, a.shape[0], rng)
        src = _pick("rows", rows, b.shape[0], rng)
        if columns is None:
            child[dst] = b[src]
        else:
            cols = _pick("columns", columns, a.shape[1], rng)
            child[np.ix_(dst, cols)] = b[np.ix_(src, cols)]
        return child

    return _numpy_op(cross)
