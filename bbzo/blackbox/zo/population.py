"""Population search with an ask/tell interface: the ``AskTell`` base, the elitist
``PopulationSearch`` (batched operators, lazy feasibility, early stop), the genetic algorithm as
one configuration of it, and ``population_minimize`` (the budgeted loop). The evolution strategy
lives in ``es``.

Optimisers work by generations: ``ask()`` returns a batch of candidates, the caller
evaluates them and passes the losses back with ``tell(batch, losses)`` (minimisation; maximise
a score by telling its negation). ``ask_size`` says how many evaluations the next batch needs at
most; ``best`` is the best (candidate, loss) measured so far; ``state_dict()`` /
``load_state_dict()`` save and restore everything, random state included, so a resumed run
continues exactly as an uninterrupted one. ``population_minimize`` runs the loop under a query
budget.

A ``PopulationSearch`` generation, in order:

1. ``select`` picks parents (``elite_parents``: the whole elite; ``uniform_parents``: uniform
   draws from it; ``initial_parents``: the initial population every time, a baseline that
   never follows the objective);
2. one ``mutate(parents, rng)`` call proposes all mutation children (and one
   ``crossover(firsts, seconds, rng)`` call all crossover children), each a ``Child`` that names
   its parent and what changed, so the objective may score it from its parent's ``stats``;
3. the objective scores the batch (a ``Brood``: the children's values, with their records);
4. improvers are the children with a loss strictly below the bar: the best loss so far
   (``improvers="best"``) or the worst elite loss while the elite is full (``"elite"``; any
   child while it is not); only they go to ``feasible``, in one batched call;
5. feasible improvers join the elite (stable sort by loss, elite first, truncated to
   ``elite_size``) and may become the best;
6. ``stop(best)`` may end the search.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bbzo.blackbox.budget import Budget, as_budget
from bbzo.blackbox.zo.minimize import OptimizeResult
from bbzo.blackbox.zo.objective import check_values
from bbzo.checks import int_at_least, one_of, positive
from bbzo.errors import BudgetExceeded, InputError

Mutation = Callable[[Any, np.random.Generator], Any]
Crossover = Callable[[Any, Any, np.random.Generator], Any]


@dataclass
class Child:
    """One candidate of a generation.

    Attributes:
        value: the candidate itself (what the objective scores).
        parent: index into the generation's ``Brood.parents`` (None for an initial candidate).
        changes: what differs from the parent, as the operator defines it (e.g. the indices of
            the redrawn rows); None when the operator does not say.
        stats: free for the objective: what it wants to keep about this candidate (e.g. its
            sufficient statistics, so that its own children are scored incrementally).
        loss: set by ``tell``.
    """

    value: Any
    parent: int | None = None
    changes: Any = None
    stats: Any = None
    loss: float | None = None


class Brood(list):
    """One generation's batch: the children's values in order (what a plain objective scores),
    with ``children`` (their ``Child`` records), ``parents`` (the ``Child`` records, with
    ``stats`` and ``loss``, that ``Child.parent`` indexes) and ``dropped`` (children cut away
    unscored because the budget was spent, see ``PopulationSearch.cut``)."""

    def __init__(self, children: Sequence[Child], parents: Sequence[Child] = ()) -> None:
        super().__init__(c.value for c in children)
        self.children = list(children)
        self.parents = list(parents)
        self.dropped = 0


BatchMutation = Callable[[list[Any], np.random.Generator], list[Child]]
BatchCrossover = Callable[[list[Any], list[Any], np.random.Generator], list[Child]]
Feasibility = Callable[[list[Child]], Sequence[bool]]
Selection = Callable[["PopulationSearch", int, np.random.Generator], list[Child]]


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
        """Evaluations (objective queries) the next ``ask()`` batch needs at most."""

    @property
    def best(self) -> tuple[Any, float] | None:
        """(candidate, loss) with the lowest loss told so far, or None before the first tell."""
        return self._best

    @property
    def done(self) -> bool:
        """The optimiser's own stop condition is met (``population_minimize`` then stops)."""
        return False

    def batch_size(self, batch: Any) -> int:
        """Evaluations ``batch`` (returned by ``ask()``) needs."""
        return self.ask_size

    def report(self) -> dict:
        """Counts about the last generation, added to ``population_minimize``'s history."""
        return {}

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
        y = check_values(losses, self.batch_size(batch))
        self._track_best(batch, y)
        self._update(batch, y)
        self._pending = None
        self.generation += 1

    def _track_best(self, batch: Any, y: torch.Tensor) -> None:
        """Keep the lowest loss told so far (first on ties)."""
        i = int(torch.argmin(y))
        if self._best is None or float(y[i]) < self._best[1]:
            self._best = (self._candidate(batch, i), float(y[i]))

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


def elite_parents(search: PopulationSearch, count: int, rng: np.random.Generator) -> list[Child]:
    """Selection: the whole elite, best first (the mutation operator decides how many children
    each gets)."""
    return list(search.members)


def initial_parents(search: PopulationSearch, count: int,
                    rng: np.random.Generator) -> list[Child]:
    """Selection: the initial population at every generation (a baseline whose proposals never
    depend on the objective; the objective only picks what is kept)."""
    return list(search.initial)


def uniform_parents(search: PopulationSearch, count: int,
                    rng: np.random.Generator) -> list[Child]:
    """Selection: ``count`` parents drawn uniformly, with replacement, from the elite."""
    return [search.members[i] for i in rng.integers(len(search.members), size=count)]


IMPROVER_RULES = ("best", "elite")


class PopulationSearch(AskTell):
    """Elitist population search with batched operators and lazy feasibility (see the module
    docstring for one generation's steps). Losses are assumed deterministic.

    Generation 0 scores the initial population (skipped when ``init_losses`` are given); the
    initial candidates are taken as feasible. Every later generation asks for at most
    ``children`` children: ``round(crossover_rate * children)`` by one ``crossover`` call on
    pairs of distinct elite members drawn uniformly (none while the elite has a single member),
    the rest by one ``mutate`` call on the parents ``select`` returns.

    Args:
        init: initial candidates (values, or ``Child`` records to keep their ``stats``), or
            ``init_fn(rng) -> value`` called ``init_count`` times.
        mutate: ``mutate(parents, rng) -> [Child]``: children of a list of parent values,
            ``Child.parent`` indexing that list; it must not change the parents. See
            ``batched_mutation`` (wraps a per-candidate operator), ``resample_rows``.
        elite_size: members kept between generations, >= 1.
        children: most children per generation, >= 1.
        select: ``select(search, count, rng) -> [Child]``, the parents handed to ``mutate``
            (``count`` = mutation children wanted): ``uniform_parents`` (default),
            ``elite_parents``, ``initial_parents``.
        crossover: ``crossover(firsts, seconds, rng) -> [Child]`` (``Child.parent`` indexes
            ``firsts``) or None; see ``batched_crossover``.
        crossover_rate: share of the children made by crossover, in [0, 1].
        feasible: ``feasible(improvers) -> [bool]``, called once per generation on the
            improvers only (never with an empty list); None: every candidate is feasible.
        improvers: ``"elite"`` (beat the worst elite member) or ``"best"`` (beat the best).
        key: ``key(value) -> hashable``; improvers with a key already seen in the generation
            are dropped before the checks (keeps the first). None: no deduplication.
        stop: ``stop(best_child) -> bool``, checked after each generation (``done``).
        init_losses: the initial candidates' losses, if already known (no generation 0).
        init_count: candidates ``init_fn`` makes (default ``elite_size + children``).
        partial: the budgeted driver may score only the first children of the last generation.
        seed: seeds the numpy generator handed to ``init_fn``, ``select`` and the operators.
    """

    def __init__(self, init: Sequence[Any] | Callable[[np.random.Generator], Any], *,
                 mutate: BatchMutation, elite_size: int, children: int,
                 select: Selection = uniform_parents, crossover: BatchCrossover | None = None,
                 crossover_rate: float = 0.5, feasible: Feasibility | None = None,
                 improvers: str = "elite", key: Callable[[Any], Hashable] | None = None,
                 stop: Callable[[Child], bool] | None = None,
                 init_losses: Sequence[float] | None = None, init_count: int | None = None,
                 partial: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.elite_size = int_at_least("elite_size", elite_size, 1)
        self.children = int_at_least("children", children, 1)
        for name, fn in (("mutate", mutate), ("select", select)):
            if not callable(fn):
                raise InputError(f"{name} must be callable; see the PopulationSearch docstring")
        for name, fn in (("crossover", crossover), ("feasible", feasible), ("key", key),
                         ("stop", stop)):
            if fn is not None and not callable(fn):
                raise InputError(f"{name} must be callable or None")
        if not 0.0 <= crossover_rate <= 1.0:
            raise InputError(f"crossover_rate must be in [0, 1], got {crossover_rate!r}")
        self.improvers = one_of("improvers", improvers, IMPROVER_RULES)
        if isinstance(init, (list, tuple)):
            if not init:
                raise InputError("init must hold at least one candidate")
            self._init: list[Child] | None = [c if isinstance(c, Child) else Child(c)
                                              for c in init]
        elif callable(init):
            self._init = None
        else:
            raise InputError(f"init must be a list of candidates or a function "
                             f"init_fn(rng) -> candidate, got {type(init).__name__}; wrap a "
                             f"single candidate as [x]")
        self.init_fn = init if self._init is None else None
        self.init_count = int_at_least("init_count", init_count or elite_size + children, 1)
        self.mutate, self.select, self.crossover = mutate, select, crossover
        self.crossover_rate = float(crossover_rate) if crossover is not None else 0.0
        self.feasible, self.key, self.stop = feasible, key, stop
        self.partial = bool(partial)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.members: list[Child] = []
        self.initial: list[Child] = []
        self.last: dict = {}
        self._best_child: Child | None = None
        if init_losses is not None:
            if self._init is None or len(init_losses) != len(self._init):
                raise InputError("init_losses must give one loss per candidate of an init list")
            self._take_initial(self._init, check_values(init_losses, len(self._init)))

    @property
    def elite(self) -> list[tuple[Any, float]]:
        """(value, loss) of the elite members, best first."""
        return [(c.value, c.loss) for c in self.members]

    @property
    def best_child(self) -> Child | None:
        """The best feasible candidate measured so far, as its ``Child`` record."""
        return self._best_child

    @property
    def done(self) -> bool:
        return self.stop is not None and bool(self.members) and bool(self.stop(self._best_child))

    @property
    def ask_size(self) -> int:
        if self.members:
            return self.children
        return self.init_count if self._init is None else len(self._init)

    def batch_size(self, batch: Brood) -> int:
        return len(batch)

    def report(self) -> dict:
        return dict(self.last)

    def cut(self, k: int) -> None:
        """Keep only the first ``k`` children of the pending batch (the budget allows no more);
        the others are never scored."""
        brood = self._pending
        if brood is None or not 0 <= k <= len(brood):
            raise InputError(f"cut({k}) needs a pending batch of at least {k} children")
        brood.dropped = len(brood) - k
        del brood[k:]
        del brood.children[k:]

    def _propose(self) -> Brood:
        if not self.members:
            if self._init is not None:
                return Brood([copy.copy(c) for c in self._init])
            return Brood([Child(self.init_fn(self.rng)) for _ in range(self.init_count)])
        n_cross = round(self.crossover_rate * self.children) if len(self.members) >= 2 else 0
        children: list[Child] = []
        parents: list[Child] = []
        if n_cross:
            firsts, seconds = self._pairs(n_cross)
            parents = [self.members[i] for i in firsts]
            children = self._checked(self.crossover([p.value for p in parents],
                                                    [self.members[j].value for j in seconds],
                                                    self.rng), parents, "crossover")
        chosen = list(self.select(self, self.children - n_cross, self.rng))
        for c in self._checked(self.mutate([p.value for p in chosen], self.rng), chosen,
                               "mutate"):
            c.parent += len(parents)
            children.append(c)
        if len(children) > self.children:
            raise InputError(f"the operators made {len(children)} children, more than "
                             f"children={self.children}; make fewer or raise children")
        return Brood(children, parents + chosen)

    def _pairs(self, count: int) -> tuple[list[int], list[int]]:
        """``count`` ordered pairs of distinct elite indices, uniform, drawn in two calls."""
        n = len(self.members)
        firsts = self.rng.integers(n, size=count)
        seconds = self.rng.integers(n - 1, size=count)
        seconds += seconds >= firsts  # skip the first's own index
        return firsts.tolist(), seconds.tolist()

    @staticmethod
    def _checked(children: Any, parents: list[Child], name: str) -> list[Child]:
        children = list(children)
        for c in children:
            if not isinstance(c, Child) or not isinstance(c.parent, int) \
                    or not 0 <= c.parent < len(parents):
                raise InputError(f"{name} must return Child records whose parent indexes the "
                                 f"{len(parents)} parents it was given, got {c!r:.80}")
        return children

    def _candidate(self, batch: Brood, i: int) -> Any:
        return batch[i]

    def _track_best(self, batch: Brood, y: torch.Tensor) -> None:
        """The best is updated in ``_update``, from feasible candidates only."""

    def _take_initial(self, children: list[Child], losses: torch.Tensor) -> None:
        for c, loss in zip(children, losses.tolist(), strict=True):
            c.loss = loss
        self.initial = list(children)
        self.members = sorted(children, key=lambda c: c.loss)[:self.elite_size]
        self._set_best(self.members[0])

    def _set_best(self, child: Child) -> None:
        self._best_child = child
        self._best = (child.value, child.loss)

    def _update(self, batch: Brood, losses: torch.Tensor) -> None:
        if not self.members:
            self._take_initial(batch.children, losses)
            self.last = {"children": len(batch), "improvers": 0, "feasible": 0,
                         "dropped": batch.dropped}
            return
        for c, loss in zip(batch.children, losses.tolist(), strict=True):
            c.loss = loss
        if self.improvers == "best":
            bar = self._best_child.loss
        else:
            bar = self.members[-1].loss if len(self.members) == self.elite_size else np.inf
        improvers = [c for c in batch.children if c.loss < bar]
        if self.key is not None:
            unique = {}
            for c in improvers:
                unique.setdefault(self.key(c.value), c)
            improvers = list(unique.values())
        passed = [True] * len(improvers)
        if self.feasible is not None and improvers:
            passed = [bool(p) for p in self.feasible(improvers)]
            if len(passed) != len(improvers):
                raise InputError(f"feasible returned {len(passed)} answers for "
                                 f"{len(improvers)} improvers; return one bool each")
        accepted = [c for c, ok in zip(improvers, passed, strict=True) if ok]
        self.members = sorted(self.members + accepted, key=lambda c: c.loss)[:self.elite_size]
        if accepted:
            top = min(accepted, key=lambda c: c.loss)
            if top.loss < self._best_child.loss:
                self._set_best(top)
        self.last = {"children": len(batch), "improvers": len(improvers),
                     "feasible": len(accepted), "dropped": batch.dropped}

    def _config(self) -> dict:
        return {"elite_size": self.elite_size, "children": self.children,
                "crossover_rate": self.crossover_rate, "improvers": self.improvers,
                "partial": self.partial, "seed": self.seed}

    def _extra_state(self) -> dict:
        return {"members": self.members, "initial": self.initial, "last": self.last,
                "best_child": self._best_child,
                "rng": self.rng.bit_generator.state}

    def _load_extra_state(self, state: dict) -> None:
        self.members, self.initial, self.last = state["members"], state["initial"], state["last"]
        self._best_child = state["best_child"]
        self.rng.bit_generator.state = state["rng"]


class GeneticAlgorithm(PopulationSearch):
    """Elitist genetic algorithm over arbitrary candidates with per-candidate operators: the
    ``PopulationSearch`` with ``uniform_parents``, ``improvers="elite"`` and no feasibility.

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
        self.population_size = int_at_least("population_size", population_size, 2)
        elite_size = int_at_least("elite_size", elite_size, 1)
        if elite_size >= self.population_size:
            raise InputError(f"elite_size ({elite_size}) must be smaller than population_size "
                             f"({population_size}) so that each generation has children")
        if not callable(mutation):
            raise InputError("mutation must be callable as mutation(parent, rng) -> child")
        if crossover is not None and not callable(crossover):
            raise InputError("crossover must be callable as crossover(a, b, rng) -> child, "
                             "or None")
        super().__init__(init, mutate=batched_mutation(mutation), elite_size=elite_size,
                         children=self.population_size - elite_size,
                         crossover=None if crossover is None else batched_crossover(crossover),
                         crossover_rate=crossover_rate, init_count=self.population_size,
                         seed=seed)

    def _config(self) -> dict:
        return {"population_size": self.population_size, "elite_size": self.elite_size,
                "crossover_rate": self.crossover_rate, "seed": self.seed}


def batched_mutation(mutation: Mutation) -> BatchMutation:
    """A batched mutation from a per-candidate one: one child per parent (``changes`` None)."""

    def mutate(parents: list[Any], rng: np.random.Generator) -> list[Child]:
        return [Child(mutation(p, rng), i) for i, p in enumerate(parents)]

    return mutate


def batched_crossover(crossover: Crossover) -> BatchCrossover:
    """A batched crossover from a per-pair one: one child per pair, its parent the first."""

    def cross(firsts: list[Any], seconds: list[Any], rng: np.random.Generator) -> list[Child]:
        return [Child(crossover(a, b, rng), i)
                for i, (a, b) in enumerate(zip(firsts, seconds, strict=True))]

    return cross


def population_minimize(fun: Callable[[Any], Any], optimizer: AskTell, *,
                        budget: Budget | int | None = None, generations: int | None = None,
                        callback: Callable[[dict], bool | None] | None = None) -> OptimizeResult:
    """Run ask/tell generations of ``optimizer`` on a batched objective under a query budget.

    A generation is asked only when the budget can afford all of it (``ask_size``), so the
    budget is never exceeded and no batch is left half-evaluated; a ``PopulationSearch`` built
    with ``partial=True`` instead asks while a query is left and has its last batch ``cut`` to
    what is left. The loop also ends when ``optimizer.done`` (its ``stop`` predicate).
    Resuming works: pass an optimiser restored with ``load_state_dict``.

    Args:
        fun: batched objective: ``fun(X)`` with X of shape (n, d) → (n,) for
            ``EvolutionStrategy``, ``fun(brood)`` with a ``Brood`` (a list of n candidate
            values, plus ``children``/``parents`` records) → (n,) for a ``PopulationSearch``.
            Each candidate is one query.
        optimizer: a ``PopulationSearch`` (e.g. ``GeneticAlgorithm``) or an
            ``EvolutionStrategy``.
        budget: a ``Budget`` or a maximum number of queries; never exceeded.
        generations: most generations in this call. With neither ``budget`` nor
            ``generations``, 1000 generations.
        callback: called after each generation with its history dict; return True to stop.

    Returns:
        An ``OptimizeResult``: ``x``/``fun`` the best measured candidate and its loss,
        ``nqueries`` spent in this call, ``nit`` generations in this call, ``history`` one dict
        per generation (``nit``, ``nqueries``, ``loss`` = the generation's mean loss (nan for
        an empty one), ``best``, ``lr`` = the optimiser's step size, 0 for a population search,
        plus ``optimizer.report()``: for a ``PopulationSearch`` ``children``, ``improvers``,
        ``feasible``, ``dropped``), ``lr``; ``message`` says why it stopped.
    """
    if not callable(fun):
        raise InputError("fun must be callable as fun(batch) -> losses of shape (n,)")
    if not isinstance(optimizer, AskTell):
        raise InputError(f"optimizer must be a PopulationSearch (e.g. GeneticAlgorithm) or an "
                         f"EvolutionStrategy, got {type(optimizer).__name__}")
    if callback is not None and not callable(callback):
        raise InputError("callback must be callable as callback(info_dict)")
    budget = as_budget(budget)
    if generations is None and budget.max_queries is None:
        generations = 1000
    if generations is not None:
        generations = int_at_least("generations", generations, 1)
    partial = bool(getattr(optimizer, "partial", False))
    lr = float(getattr(optimizer, "lr", 0.0))
    history: list[dict] = []
    nqueries, nit = 0, 0
    message = f"maximum number of generations ({generations}) reached"
    while generations is None or nit < generations:
        need = 1 if partial else optimizer.ask_size
        if not budget.can_afford(queries=need):
            message = (f"query budget exhausted: the next generation needs {need} queries, "
                       f"{budget.remaining_queries} left")
            break
        batch = optimizer.ask()
        n = optimizer.batch_size(batch)
        left = budget.remaining_queries
        if partial and left is not None and n > left:
            optimizer.cut(left)
            n = left
        try:
            budget.reserve(queries=n)
        except BudgetExceeded as err:
            message = str(err)
            break
        nqueries += n
        losses = check_values(fun(batch), n)
        optimizer.tell(batch, losses)
        nit += 1
        record = {"nit": nit, "nqueries": nqueries,
                  "loss": float(losses.mean()) if n else float("nan"),
                  "best": optimizer.best[1], "lr": lr, **optimizer.report()}
        history.append(record)
        if callback is not None and callback(dict(record)):
            message = "stopped by callback"
            break
        if optimizer.done:
            message = "stop condition met"
            break
    if optimizer.best is None:
        raise BudgetExceeded(f"budget too small for one generation: {message}; raise it or "
                             f"lower population_size", nqueries=nqueries)
    x, loss = optimizer.best
    return OptimizeResult(x=x, fun=loss, nqueries=nqueries, nit=nit, history=history,
                          success=True, message=message, lr=lr,
                          method=type(optimizer).__name__)


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


def resample_rows(domain_sizes: int | Sequence[int], *, rows: int = 1,
                  per_parent: int = 1) -> BatchMutation:
    """Batched mutation for (N, m) integer tables (numpy): each child is its parent with
    ``rows`` distinct random rows redrawn uniformly from the column domains; ``changes`` holds
    the redrawn row indices, shape (rows,), so an objective can update the parent's statistics
    from the old and new rows alone.

    Args:
        domain_sizes: one size for every column or one per column, shape (m,).
        rows: rows redrawn per child, >= 1.
        per_parent: children per parent, >= 1 (parent i's children come i-th, together).
    """
    sizes = np.asarray(domain_sizes)
    if sizes.size == 0 or not np.issubdtype(sizes.dtype, np.integer) or (sizes < 1).any():
        raise InputError(f"domain_sizes must be positive integers, got {domain_sizes!r}")
    rows = int_at_least("rows", rows, 1)
    per_parent = int_at_least("per_parent", per_parent, 1)

    def mutate(parents: list[np.ndarray], rng: np.random.Generator) -> list[Child]:
        if not parents:
            return []
        n, m = parents[0].shape if parents[0].ndim == 2 else (0, 0)
        if any(p.shape != (n, m) for p in parents) or m == 0 or sizes.ndim > 1 \
                or sizes.size not in (1, m):
            raise InputError(f"resample_rows needs (N, m) tables of one shape and one domain "
                             f"size or m of them, got tables of shape {parents[0].shape} and "
                             f"{sizes.size} sizes")
        count = len(parents) * per_parent
        if rows == 1:
            index = rng.integers(n, size=(count, 1))
        else:
            index = np.stack([_pick("rows", rows, n, rng) for _ in range(count)])
        values = rng.integers(0, sizes, (count, rows, m))
        children = []
        for k in range(count):
            child = parents[k // per_parent].copy()
            child[index[k]] = values[k]
            children.append(Child(child, k // per_parent, index[k]))
        return children

    return mutate
