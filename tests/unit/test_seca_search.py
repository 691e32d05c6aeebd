"""The SECA search loop with a scripted proposer and a real tiny target: N parents everywhere,
improve-then-check, feasible-only updates, the early stop, eligibility and determinism."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from seca_support import QUESTION, ScriptedProposer, save_roomy_lm

from bbzo.attacks.seca.constraints import Verdict
from bbzo.attacks.seca.objective import OptionObjective
from bbzo.attacks.seca.search import choose_target, seca_search
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.targets.hf import HFTarget
from bbzo.blackbox.zo.population import initial_parents
from bbzo.errors import InputError

WORDS = ["capital", "city", "France", "which", "named", "main", "seat", "government", "of",
         "is", "the", "country", "French", "chief", "known", "as"]


class RecordingChecks:
    """Passes a text when ``rule(text)``; records every batch it is asked about."""

    name = "recording"

    def __init__(self, rule=lambda text: True) -> None:
        self.rule = rule
        self.batches: list[list[str]] = []

    def check(self, question, texts):
        self.batches.append(list(texts))
        return [[Verdict("rule", "equivalence", bool(self.rule(t)), None, "")] for t in texts]


@pytest.fixture(scope="module")
def objective(tmp_path_factory) -> OptionObjective:
    lm = HFTarget(str(save_roomy_lm(tmp_path_factory.mktemp("lm"))), device="cpu", max_batch=16)
    return OptionObjective(QueryLayer(lm))


def phrase(step: int, i: int, j: int, parent: str) -> str:
    """A deterministic, distinct pseudo-rewrite per (step, parent, proposal)."""
    rng = np.random.default_rng([step, i, j])
    return " ".join(rng.choice(WORDS, size=6)) + "?"


def as_eligible(objective, question):
    """``question`` with its answer set to the tiny model's top option (so it is eligible), and
    the target that ``choose_target`` picks."""
    logp = objective.evaluate(question, [question.question])[0]
    q = replace(question, answer=int(np.argmax(logp)))
    return q, choose_target(logp, q.answer)


@pytest.fixture(scope="module")
def eligible(objective):
    """A question the tiny model answers with a small margin: pseudo-rewrites flip it."""
    return as_eligible(objective, QUESTION)


@pytest.fixture(scope="module")
def hard(objective):
    """A question the tiny model answers with p > 0.9: searches run all their steps."""
    q, target = as_eligible(objective, replace(QUESTION, choices=("Paris", "Berlin", "Nice",
                                                                   "Oslo")))
    logp = objective.evaluate(q, [q.question])[0]
    assert np.exp(logp[q.answer]) > 0.9, "the tiny model changed; pick other options"
    return q, target


def test_choose_target():
    logp = np.log([0.5, 0.1, 0.3, 0.1])
    assert choose_target(logp, 0) == 2
    assert choose_target(logp, 2) is None  # the model does not answer correctly
    assert choose_target(np.log([0.4, 0.3, 0.3]), 0) == 1  # a tie goes to the lower index


@pytest.mark.parametrize("n, m", [(2, 2), (5, 1), (4, 3)])
def test_every_step_has_n_parents_and_n_times_m_candidates(objective, hard, n, m):
    q, target = hard
    # Exactly one feasible improver per step at most: the checks pass texts ending in "0?".
    proposer = ScriptedProposer(lambda s, i, j, p: phrase(s, i, j, p)[:-1] + f" {j}?")
    checks = RecordingChecks(lambda t: t.endswith(" 0?"))
    result = seca_search(q, objective=objective, proposer=proposer, checks=checks,
                         target=target, parents=n, candidates=m, iterations=4)
    assert result.steps == len(proposer.calls) == 4
    for call in proposer.calls:
        assert len(call["parents"]) == n and call["m"] == m
        assert len(call["texts"]) == n * m
    assert proposer.calls[0]["parents"] == [q.question] * n
    assert result.proposals == sum(len(c["texts"]) for c in proposer.calls)


def test_improve_then_check_and_feasible_only_updates(objective, hard):
    q, target = hard
    proposer = ScriptedProposer(phrase)
    checks = RecordingChecks(lambda t: len(t) % 2 == 0)  # about half the improvers are feasible
    result = seca_search(q, objective=objective, proposer=proposer, checks=checks,
                         target=target, parents=3, candidates=3, iterations=6)
    best = result.original.score
    batches = iter(checks.batches)
    for call, row in zip(proposer.calls, result.trace, strict=True):
        scores = objective.evaluate(q, call["texts"])[:, target]
        improvers = {t for t, s in zip(call["texts"], scores, strict=True) if s > best}
        checked = next(batches) if improvers else []
        assert set(checked) == improvers  # every improver is checked, nothing else
        feasible = [s for t, s in zip(call["texts"], scores, strict=True)
                    if t in improvers and len(t) % 2 == 0]
        best = max([best, *feasible])
        assert row["best"] == pytest.approx(best, abs=1e-5)
        assert (row["improvers"], row["feasible"]) == (len(improvers), len(set(
            t for t in improvers if len(t) % 2 == 0)))
    assert next(batches, None) is None
    assert len(checks.batches) >= 2 and result.steps == 6  # not vacuous
    assert result.best.score == pytest.approx(best, abs=1e-9)
    assert result.improvers == sum(len(b) for b in checks.batches) > 0
    assert result.checks["equivalence"]["checked"] == result.improvers
    if result.best is not result.original:
        assert len(result.best.text) % 2 == 0 and result.best.verdicts


def test_next_parents_are_top_feasible_children_padded_with_old_parents(objective, hard):
    q, target = hard
    n = 3
    proposer = ScriptedProposer(phrase)
    rule = lambda t: len(t) % 2 == 0  # noqa: E731
    seca_search(q, objective=objective, proposer=proposer, checks=RecordingChecks(rule),
                target=target, parents=n, candidates=2, iterations=6)
    score = {q.question: float(objective.evaluate(q, [q.question])[0, target])}
    best, padded = score[q.question], 0
    for call, following in zip(proposer.calls[:-1], proposer.calls[1:], strict=True):
        scores = objective.evaluate(q, call["texts"])[:, target]
        score.update(zip(call["texts"], scores, strict=True))
        feasible = sorted({t for t, s in zip(call["texts"], scores, strict=True)
                           if s > best and rule(t)}, key=score.get, reverse=True)
        old = sorted(call["parents"], key=score.get, reverse=True)
        assert following["parents"] == (feasible + old)[:n]
        padded += 0 < len(feasible) < n
        best = max([best, *(score[t] for t in feasible)])
    assert padded >= 1  # the padding case happened


def test_early_stop_when_the_target_becomes_the_top_option(objective, eligible):
    q, target = eligible
    candidates = [phrase(100 + k, 0, 0, "") for k in range(300)]
    logp = objective.evaluate(q, candidates)
    winners = [t for t, row in zip(candidates, logp, strict=True) if np.argmax(row) == target]
    assert winners, "no pseudo-rewrite flips the tiny model; widen the candidate pool"
    # Step 0 proposes the original itself (no improver); step 1 proposes a winner.
    proposer = ScriptedProposer(lambda s, i, j, p: q.question if s == 0 else winners[0])
    result = seca_search(q, objective=objective, proposer=proposer, checks=RecordingChecks(),
                         target=target, parents=2, candidates=2, iterations=10)
    assert result.steps == 2 and result.stopped_early
    assert result.best.text == winners[0] and result.best.hit
    assert len(proposer.calls) == 2


def test_infeasible_winner_does_not_stop_the_search(objective, eligible):
    q, target = eligible
    candidates = [phrase(100 + k, 0, 0, "") for k in range(300)]
    logp = objective.evaluate(q, candidates)
    winner = next(t for t, row in zip(candidates, logp, strict=True) if np.argmax(row) == target)
    proposer = ScriptedProposer(lambda s, i, j, p: winner)
    result = seca_search(q, objective=objective, proposer=proposer,
                         checks=RecordingChecks(lambda t: False), target=target, parents=2,
                         candidates=1, iterations=3)
    assert result.steps == 3 and not result.stopped_early
    assert result.best is result.original and result.feasible == 0


def test_unusable_proposals_are_skipped_and_counted(objective, eligible):
    q, target = eligible
    proposer = ScriptedProposer(lambda s, i, j, p: None if j == 0 else phrase(s, i, j, p))
    result = seca_search(q, objective=objective, proposer=proposer, checks=RecordingChecks(),
                         target=target, parents=2, candidates=2, iterations=2)
    assert result.unusable == 2 * result.steps
    assert result.proposals == 4 * result.steps


def test_search_is_deterministic(objective, eligible):
    q, target = eligible
    runs = [seca_search(q, objective=objective, proposer=ScriptedProposer(phrase),
                        checks=RecordingChecks(lambda t: "city" in t), target=target,
                        iterations=4) for _ in range(2)]
    assert runs[0].best.text == runs[1].best.text
    assert runs[0].trace == runs[1].trace


def test_bad_arguments(objective, eligible):
    q, target = eligible
    kwargs = dict(objective=objective, checks=RecordingChecks(), iterations=1)
    with pytest.raises(InputError, match="wrong option"):
        seca_search(q, proposer=ScriptedProposer(phrase), target=q.answer, **kwargs)
    with pytest.raises(InputError, match="parents must be a positive integer"):
        seca_search(q, proposer=ScriptedProposer(phrase), target=target, parents=0, **kwargs)
    short = ScriptedProposer(phrase)
    short.propose = lambda *a: ["only one"]
    with pytest.raises(InputError, match="parents x candidates"):
        seca_search(q, proposer=short, target=target, **kwargs)


# ---------------------------------------------------------------- pinned decisions


class Recorded:
    """Wraps the objective and the checks and logs, per step, what the search asked of them."""

    def __init__(self, objective, checks) -> None:
        self.objective, self.checks = objective, checks
        self.scored: list[list[str]] = []
        self.checked: list[list[str]] = []

    def evaluate(self, question, texts):
        self.scored.append(list(texts))
        return self.objective.evaluate(question, texts)

    def check(self, question, texts):
        self.checked.append(list(texts))
        return self.checks.check(question, texts)


def edit(step: int, i: int, j: int, parent: str) -> str | None:
    """A rewrite of ``parent`` replacing one of its words (so parents steer the proposals); one
    proposal in seven is unusable."""
    rng = np.random.default_rng([step, i, j, 7])
    if rng.integers(7) == 0:
        return None
    words = parent.rstrip("?").split()
    words[int(rng.integers(len(words)))] = str(rng.choice(WORDS))
    return " ".join(words) + "?"


def decisions(question, target, objective, rule, **kwargs) -> list[dict]:
    """Per step: the parents, the texts proposed, scored and checked (the improvers), the
    feasible ones, and the best text and score after the step; then the final outcome."""
    proposer = ScriptedProposer(edit)
    spy = Recorded(objective, RecordingChecks(rule))
    result = seca_search(question, objective=spy, proposer=proposer, checks=spy, target=target,
                         original_logp=objective.evaluate(question, [question.question])[0],
                         **kwargs)
    checked = iter(spy.checked)
    log = []
    for call, scored, row in zip(proposer.calls, spy.scored, result.trace, strict=True):
        assert scored == [t for t in call["texts"] if t][:len(scored)]  # in order, capped
        improvers = next(checked) if row["improvers"] else []
        log.append({"parents": call["parents"], "scored": len(scored), "improvers": improvers,
                    "feasible": [t for t in improvers if rule(t)], "best": round(row["best"], 4)})
    assert next(checked, None) is None
    log.append({"best": result.best.text, "score": round(result.best.score, 4),
                "steps": result.steps, "stopped_early": result.stopped_early,
                "counts": [result.proposals, result.unusable, result.unscored,
                           result.improvers, result.feasible]})
    return log


def feasible_by_length(text: str) -> bool:
    return len(text) % 3 != 0


# Generated once by today's search (before its move onto bbzo.blackbox.zo.population): the
# decisions any later implementation must reproduce on this model, proposer and checks.
PINNED = {'seca': [{'parents': ['What is the capital of France?',
                       'What is the capital of France?',
                       'What is the capital of France?'],
           'scored': 8,
           'improvers': ['What is the capital known France?',
                         'What is the capital seat France?',
                         'What is capital capital of France?'],
           'feasible': ['What is the capital seat France?', 'What is capital capital of France?'],
           'best': -5.0585},
          {'parents': ['What is the capital seat France?',
                       'What is capital capital of France?',
                       'What is the capital of France?'],
           'scored': 7,
           'improvers': [],
           'feasible': [],
           'best': -5.0585},
          {'parents': ['What is the capital seat France?',
                       'What is capital capital of France?',
                       'What is the capital of France?'],
           'scored': 9,
           'improvers': [],
           'feasible': [],
           'best': -5.0585},
          {'parents': ['What is the capital seat France?',
                       'What is capital capital of France?',
                       'What is the capital of France?'],
           'scored': 7,
           'improvers': ['What is the capital chief France?'],
           'feasible': [],
           'best': -5.0585},
          {'parents': ['What is the capital seat France?',
                       'What is capital capital of France?',
                       'What is the capital of France?'],
           'scored': 5,
           'improvers': ['What is the capital seat which?'],
           'feasible': ['What is the capital seat which?'],
           'best': -5.031},
          {'parents': ['What is the capital seat which?',
                       'What is the capital seat France?',
                       'What is capital capital of France?'],
           'scored': 7,
           'improvers': [],
           'feasible': [],
           'best': -5.031},
          {'parents': ['What is the capital seat which?',
                       'What is the capital seat France?',
                       'What is capital capital of France?'],
           'scored': 8,
           'improvers': [],
           'feasible': [],
           'best': -5.031},
          {'parents': ['What is the capital seat which?',
                       'What is the capital seat France?',
                       'What is capital capital of France?'],
           'scored': 7,
           'improvers': ['What is the capital which which?'],
           'feasible': ['What is the capital which which?'],
           'best': -5.0245},
          {'best': 'What is the capital which which?',
           'score': -5.0245,
           'steps': 8,
           'stopped_early': False,
           'counts': [72, 14, 0, 6, 4]}],
 'random': [{'parents': ['What is the capital of France?',
                         'What is the capital of France?',
                         'What is the capital of France?'],
             'scored': 8,
             'improvers': ['What is the capital known France?',
                           'What is the capital seat France?',
                           'What is capital capital of France?'],
             'feasible': ['What is the capital seat France?',
                          'What is capital capital of France?'],
             'best': -5.0585},
            {'parents': ['What is the capital of France?',
                         'What is the capital of France?',
                         'What is the capital of France?'],
             'scored': 7,
             'improvers': [],
             'feasible': [],
             'best': -5.0585},
            {'parents': ['What is the capital of France?',
                         'What is the capital of France?',
                         'What is the capital of France?'],
             'scored': 9,
             'improvers': [],
             'feasible': [],
             'best': -5.0585},
            {'parents': ['What is the capital of France?',
                         'What is the capital of France?',
                         'What is the capital of France?'],
             'scored': 7,
             'improvers': ['What is the capital chief France?'],
             'feasible': [],
             'best': -5.0585},
            {'parents': ['What is the capital of France?',
                         'What is the capital of France?',
                         'What is the capital of France?'],
             'scored': 5,
             'improvers': ['What city the capital of France?'],
             'feasible': ['What city the capital of France?'],
             'best': -5.0525},
            {'parents': ['What is the capital of France?',
                         'What is the capital of France?',
                         'What is the capital of France?'],
             'scored': 7,
             'improvers': [],
             'feasible': [],
             'best': -5.0525},
            {'parents': ['What is the capital of France?',
                         'What is the capital of France?',
                         'What is the capital of France?'],
             'scored': 7,
             'improvers': [],
             'feasible': [],
             'best': -5.0525},
            {'best': 'What city the capital of France?',
             'score': -5.0525,
             'steps': 7,
             'stopped_early': False,
             'counts': [63, 12, 1, 5, 3]}],
 'early': [{'parents': ['What is the capital of France?', 'What is the capital of France?'],
            'scored': 6,
            'improvers': ['What is the capital known France?',
                          'What is the capital named France?',
                          'What is the capital seat France?',
                          'capital is the capital of France?',
                          'What is capital capital of France?'],
            'feasible': ['What is the capital seat France?', 'What is capital capital of France?'],
            'best': -1.0216},
           {'best': 'What is capital capital of France?',
            'score': -1.0216,
            'steps': 1,
            'stopped_early': True,
            'counts': [6, 0, 0, 5, 2]}]}


@pytest.mark.parametrize("name, kwargs", [
    ("seca", dict(parents=3, candidates=3, iterations=8)),
    ("random", dict(parents=3, candidates=3, iterations=8, select=initial_parents,
                    max_scored=50)),
    ("early", dict(parents=2, candidates=3, iterations=8)),
])
def test_decisions_are_pinned(objective, hard, eligible, name, kwargs):
    q, target = eligible if name == "early" else hard
    assert decisions(q, target, objective, feasible_by_length, **kwargs) == PINNED[name]
