"""SECA's constraint-preserving search over rewrites of one question (zeroth order: the target is
only queried), as a configuration of ``bbzo.blackbox.zo.population.PopulationSearch``.

State: N parents (at the start, N copies of the original) and the global best feasible rewrite.
Each step:

1. the proposer writes M rewrites of every parent (N·M candidates; one batched mutation);
2. the objective scores all of them in one batch: log p(target option) (the search minimises
   its negation);
3. only candidates that beat the global best ("improvers", ``improvers="best"``, duplicates
   dropped) go to the checks, in one batch;
4. feasible improvers update the global best;
5. the next parents are the top-N feasible improvers, padded with the best previous parents
   (the elite of size N);
6. the search stops early once the target option is the target model's top choice (``stop``).

The parent selection is a strategy: ``elite_parents`` (SECA) or ``initial_parents`` (the random
baseline, ``baseline.py``: every step proposes from N copies of the original, so the objective
never chooses what is proposed, only which proposal is reported). ``max_scored`` caps the
candidates scored (a budget whose last step may be cut), so a baseline can spend exactly a SECA
run's target queries.

Eligibility (``choose_target``): a question is attacked only if the target model ranks the
correct option first; the target option is its second most likely.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bbzo.attacks.seca.constraints import ASPECTS, Constraint, Verdict
from bbzo.attacks.seca.objective import Objective
from bbzo.attacks.seca.proposer import Proposer
from bbzo.attacks.seca.questions import Question
from bbzo.blackbox.zo.population import (
    Brood,
    Child,
    PopulationSearch,
    Selection,
    elite_parents,
    population_minimize,
)
from bbzo.checks import int_at_least
from bbzo.errors import InputError


def choose_target(logp: np.ndarray, answer: int) -> int | None:
    """The option to push the model towards: its second most likely, if it ranks ``answer``
    first (ties go to the lower index); None when the question is not eligible."""
    order = np.argsort(-np.asarray(logp, dtype=float), kind="stable")
    return int(order[1]) if int(order[0]) == answer else None


@dataclass
class Candidate:
    """A question text with its option log-probabilities (options,) under the objective."""

    text: str
    logp: np.ndarray
    target: int
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def score(self) -> float:
        """log p(target option): what the search maximises."""
        return float(self.logp[self.target])

    @property
    def hit(self) -> bool:
        """The target option is the model's top choice."""
        return int(np.argmax(self.logp)) == self.target


@dataclass
class SearchResult:
    """What one search found.

    Attributes:
        original: the question as given.
        best: the best feasible rewrite (``original`` when none beat it).
        steps: iterations run.
        stopped_early: the target option became the top choice before the last iteration.
        proposals: candidates the proposer was asked for; ``unusable`` of them gave no text.
        unscored: usable candidates left unscored because ``max_scored`` was spent.
        improvers: candidates that beat the global best and went to the checks.
        feasible: improvers that passed every check.
        unparsed: improvers with a judge reply that could not be parsed.
        checks: per aspect, ``{"checked", "passed", "parse_failures"}`` over the improvers.
        trace: per step ``{"step", "improvers", "feasible", "best"}`` (best = log p(target)).
    """

    original: Candidate
    best: Candidate
    steps: int = 0
    stopped_early: bool = False
    proposals: int = 0
    unusable: int = 0
    unscored: int = 0
    improvers: int = 0
    feasible: int = 0
    unparsed: int = 0
    checks: dict[str, dict[str, int]] = field(
        default_factory=lambda: {a: {"checked": 0, "passed": 0, "parse_failures": 0}
                                 for a in ASPECTS})
    trace: list[dict] = field(default_factory=list)

    def note(self, verdicts: list[Verdict]) -> None:
        """Count one checked candidate's verdicts by aspect."""
        self.unparsed += any(v.parse_failed for v in verdicts)
        for aspect in {v.aspect for v in verdicts}:
            mine = [v for v in verdicts if v.aspect == aspect]
            counts = self.checks[aspect]
            counts["checked"] += 1
            counts["passed"] += all(v.passed for v in mine)
            counts["parse_failures"] += any(v.parse_failed for v in mine)


class _Rewrites:
    """SECA's batched mutation: one proposer call writes ``m`` rewrites of every parent; unusable
    ones (no text) are counted in ``result`` and dropped."""

    def __init__(self, question: Question, proposer: Proposer, m: int,
                 result: SearchResult) -> None:
        self.question, self.proposer, self.m, self.result = question, proposer, m, result
        self.step = 0

    def __call__(self, parents: list[str], rng: np.random.Generator) -> list[Child]:
        texts = self.proposer.propose(self.question, parents, self.m, self.step)
        self.step += 1
        if len(texts) != len(parents) * self.m:
            raise InputError(f"proposer returned {len(texts)} rewrites for {len(parents)} "
                             f"parents x {self.m}; it must return parents x candidates")
        self.result.proposals += len(texts)
        children = [Child(t, k // self.m) for k, t in enumerate(texts) if t]
        self.result.unusable += len(texts) - len(children)
        return children


def seca_search(question: Question, *, objective: Objective, proposer: Proposer,
                checks: Constraint, target: int, parents: int = 3, candidates: int = 3,
                iterations: int = 30, original_logp: np.ndarray | None = None,
                select: Selection = elite_parents, max_scored: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> SearchResult:
    """Search for a feasible rewrite of ``question`` that makes ``target`` the top option.

    Args:
        question: the question (its options stay fixed).
        objective: scores texts (one batch per step).
        proposer: writes ``candidates`` rewrites per parent.
        checks: feasibility checks (improvers only, one batch per step).
        target: index of the wrong option to push towards.
        parents: N, parents per step.
        candidates: M, rewrites per parent per step.
        iterations: most steps.
        original_logp: the original's scores if already known (saves one evaluation).
        select: the parent selection: ``elite_parents`` (SECA) or ``initial_parents`` (the
            random baseline; see ``baseline.parent_selection``).
        max_scored: most candidates scored (None: no cap); the search ends when it is spent.
        progress: called as ``progress(step, iterations)`` after each step.
    """
    n = int_at_least("parents", parents)
    m = int_at_least("candidates", candidates)
    iterations = int_at_least("iterations", iterations)
    left = None if max_scored is None else int_at_least("max_scored", max_scored, 0)
    if not (isinstance(target, int) and 0 <= target < len(question.choices)) \
            or target == question.answer:
        raise InputError(f"target must index a wrong option of question {question.id}, "
                         f"got {target!r}")
    if original_logp is None:
        original_logp = objective.evaluate(question, [question.question])[0]
    original = Candidate(question.question, np.asarray(original_logp, dtype=float), target)
    result = SearchResult(original, original)
    if left == 0:
        return result

    def negated_scores(brood: Brood) -> list[float]:
        scores = objective.evaluate(question, list(brood))
        for child, logp in zip(brood.children, scores, strict=True):
            child.stats = Candidate(child.value, logp, target)
        return [-child.stats.score for child in brood.children]

    def feasible(improvers: list[Child]) -> list[bool]:
        passed = []
        for child, verdicts in zip(improvers, checks.check(question, [c.value for c in improvers]),
                                   strict=True):
            child.stats.verdicts = verdicts
            result.note(verdicts)
            passed.append(all(v.passed for v in verdicts))
        return passed

    def record(info: dict) -> None:
        result.best = search.best_child.stats
        result.unscored += info["dropped"]
        result.improvers += info["improvers"]
        result.feasible += info["feasible"]
        result.steps = info["nit"]
        result.trace.append({"step": info["nit"], "improvers": info["improvers"],
                             "feasible": info["feasible"], "best": round(result.best.score, 6)})
        if progress is not None:
            progress(info["nit"], iterations)

    search = PopulationSearch(
        [Child(original.text, stats=original)] * n, init_losses=[-original.score] * n,
        mutate=_Rewrites(question, proposer, m, result), elite_size=n, children=n * m,
        select=select, feasible=feasible, improvers="best", key=lambda text: text,
        stop=lambda best: best.stats.hit, partial=True)
    run = population_minimize(negated_scores, search, budget=left, generations=iterations,
                              callback=record)
    result.stopped_early = search.done and run.nit < iterations
    return result
