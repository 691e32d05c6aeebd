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
