"""SECA's constraint-preserving search over rewrites of one question (zeroth order: the target is
only queried).

State: N parents (at the start, N copies of the original) and the global best feasible rewrite.
Each step:

1. the proposer writes M rewrites of every parent (N·M candidates);
2. the objective scores all of them in one batch: log p(target option);
3. only candidates that beat the global best ("improvers") go to the checks, in one batch;
4. feasible improvers update the global best;
5. the next parents are the top-N feasible improvers, padded with the best previous parents;
6. the search stops early once the target option is the target model's top choice.

With ``from_original`` every step proposes from N copies of the original instead (the random
baseline: the objective never chooses what is proposed, only which proposal is reported);
``max_scored`` caps the candidates scored, so a baseline can spend exactly a SECA run's target
queries.

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


def seca_search(question: Question, *, objective: Objective, proposer: Proposer,
                checks: Constraint, target: int, parents: int = 3, candidates: int = 3,
                iterations: int = 30, original_logp: np.ndarray | None = None,
                from_original: bool = False, max_scored: int | None = None,
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
        from_original: propose from the original at every step (the random baseline).
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
    pool = [original] * n
    for step in range(iterations):
        if left == 0:
            break
        texts = proposer.propose(question, [p.text for p in pool], m, step)
        if len(texts) != n * m:
            raise InputError(f"proposer returned {len(texts)} rewrites for {n} parents x {m}; "
                             f"it must return parents x candidates")
        usable = [t for t in texts if t]
        result.proposals += len(texts)
        result.unusable += len(texts) - len(usable)
        if left is not None:
            result.unscored += max(0, len(usable) - left)
            usable = usable[:left]
            left -= len(usable)
        scores = objective.evaluate(question, usable)
        children = [Candidate(t, lp, target) for t, lp in zip(usable, scores, strict=True)]
        improvers = list({c.text: c for c in children if c.score > result.best.score}.values())
        feasible = []
        for child, verdicts in zip(improvers, checks.check(question, [c.text for c in improvers])
                                   if improvers else [], strict=True):
            child.verdicts = verdicts
            result.note(verdicts)
            if all(v.passed for v in verdicts):
                feasible.append(child)
        feasible.sort(key=lambda c: c.score, reverse=True)
        if feasible:
            result.best = feasible[0]
        if not from_original:
            old = sorted(pool, key=lambda c: c.score, reverse=True)
            pool = (feasible + old)[:n]
        result.improvers += len(improvers)
        result.feasible += len(feasible)
        result.steps = step + 1
        result.trace.append({"step": step + 1, "improvers": len(improvers),
                             "feasible": len(feasible), "best": round(result.best.score, 6)})
        if progress is not None:
            progress(step + 1, iterations)
        if result.best.hit:
            result.stopped_early = step + 1 < iterations
            break
    return result
