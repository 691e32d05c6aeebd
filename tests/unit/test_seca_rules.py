"""The rules proposer keeps the meaning: every proposal for the labelled equivalent pairs'
originals passes the offline checks; each transformation on an example; seeded; the hybrid's
interleaving; ``--proposer rules`` needs no proposer model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from seca_support import QUESTION, ScriptedProposer

from bbzo.attacks.seca.cascade import offline_checks
from bbzo.attacks.seca.constraints import Checks, OptionLeak
from bbzo.attacks.seca.questions import Question
from bbzo.attacks.seca.rules import (
    TRANSFORMS,
    HybridProposer,
    RulesProposer,
    apply,
    frame,
    unframe,
)
from bbzo.attacks.seca.run import SecaConfig, _needed_roles

PAIRS = [json.loads(x) for x in
         (Path(__file__).parents[1] / "data" / "seca_pairs.jsonl").read_text().splitlines()]
ORIGINALS = sorted({p["original"] for p in PAIRS if p["equivalent"]})


def test_rules_keep_the_meaning_of_every_labelled_original():
    checks = Checks([OptionLeak(), *offline_checks()])
    proposer = RulesProposer(seed=3)
    proposed = 0
    for i, original in enumerate(ORIGINALS):
        q = Question(f"q{i}", original, ("alpha", "beta", "gamma", "delta"), 0)
        texts = [t for t in proposer.propose(q, [original], 4, 0) if t]
        proposed += len(texts)
        for text, verdicts in zip(texts, checks.check(q, texts), strict=True):
            assert text != original
            assert all(v.passed for v in verdicts), (original, text, verdicts)
    assert proposed >= 3 * len(ORIGINALS)


def test_rewrites_of_rewrites_keep_the_meaning():
    checks = Checks([OptionLeak(), *offline_checks()])
    proposer = RulesProposer(seed=0)
    for i, original in enumerate(ORIGINALS[:20]):
        q = Question(f"q{i}", original, ("alpha", "beta"), 0)
        parents = [original]
        for step in range(3):
            parents = [t for t in proposer.propose(q, parents, 2, step) if t] or parents
        assert all(all(v.passed for v in vs) for vs in checks.check(q, parents)), parents


def test_a_framed_parent_keeps_its_frame_and_has_its_question_transformed():
    """SECA's parents are often framed rewrites; the rules still apply to their question."""
    checks = Checks([OptionLeak(), *offline_checks()])
    proposer = RulesProposer(seed=0)
    for i, original in enumerate(ORIGINALS):
        q = Question(f"q{i}", original, ("alpha", "beta"), 0)
        framed = frame(original, random.Random(i), q)
        if framed is None:
            continue
        prefix, body = unframe(framed)
        assert prefix and body == original
        texts = [t for t in proposer.propose(q, [framed], 4, 0) if t]
        assert all(t.startswith(prefix) and t.count(":") == framed.count(":") for t in texts)
        assert all(all(v.passed for v in vs) for vs in checks.check(q, texts)), texts
    q = Question("q", "What is the largest planet?", ("Jupiter", "Mars"), 0)
    texts = RulesProposer(seed=0).propose(q, ["Quick question: what is the largest planet?"], 6, 0)
    assert None not in texts and len(set(texts)) > 1
    assert all(t.startswith("Quick question: ") for t in texts)


@pytest.mark.parametrize("name, text, expected", [
    ("embed", "What is the capital of France?", "what the capital of France is?"),
    ("embed", "Where are the Pyramids of Giza located?",
     "where the Pyramids of Giza are located?"),
    ("embed", "What is bread made of?", "what bread is made of?"),
    ("frame", "What is the capital of France?", ": what is the capital of France?"),
    ("which_of", "What is the capital of France?", "is the capital of France?"),
    ("front", "What is the largest ocean on Earth?", "On Earth, what is the largest ocean?"),
    ("back", "On Earth, what is the largest ocean?", "What is the largest ocean on Earth?"),
    ("passive", "Who painted the Mona Lisa?", "By whom was the Mona Lisa painted?"),
    ("contract", "What is the capital of France?", "What's the capital of France?"),
    ("swap", "What is the largest ocean?", "What is the biggest ocean?"),
])
def test_each_transformation(name, text, expected):
    out = TRANSFORMS[name](text, random.Random(0), QUESTION)
    assert out is not None and out.endswith(expected)


def test_transformations_that_do_not_apply_return_none():
    rng = random.Random(0)
    assert TRANSFORMS["passive"]("Who is the king?", rng, QUESTION) is None
    assert TRANSFORMS["which_of"]("What is it?", rng, Question("q", "What is it?", (), 0)) is None
    assert apply("Hmm: no.", rng, QUESTION) is None
    # No framing of a framed or embedded question, no "which the X is" (the demo's lesson).
    assert TRANSFORMS["frame"]("Could you tell me what it is?", rng, QUESTION) is None
    assert TRANSFORMS["embed"]("Which is the largest ocean?", rng, QUESTION) is None


def test_seeded_and_counted():
    a, b = RulesProposer(seed=1), RulesProposer(seed=1)
    first = a.propose(QUESTION, [QUESTION.question] * 2, 3, 0)
    assert first == b.propose(QUESTION, [QUESTION.question] * 2, 3, 0)
    assert len(first) == 6 and a.stats.proposals == 6
    assert a.stats.json + a.stats.failed == 6


def test_hybrid_interleaves_rules_first():
    llm = ScriptedProposer(lambda step, i, j, parent: f"llm {i}.{j}")
    hybrid = HybridProposer(llm, RulesProposer(seed=0))
    texts = hybrid.propose(QUESTION, ["What is the capital of France?", "Which city is the "
                                      "capital of France?"], 3, 0)
    assert len(texts) == 6
    assert [t.startswith("llm") for t in texts] == [False, False, True, False, False, True]
    assert texts[2] == "llm 0.0" and texts[5] == "llm 1.0" and llm.calls[0]["m"] == 1
    assert hybrid.stats.proposals == 4  # the scripted proposer keeps no counts


def test_proposer_modes():
    assert SecaConfig().resolved_proposer_mode() == "hybrid"
    assert SecaConfig(proposer="openai:gpt-4.1-nano").resolved_proposer_mode() == "llm"
    assert SecaConfig(proposer="rules").resolved_proposer_mode() == "rules"
    assert SecaConfig(proposer_mode="llm").resolved_proposer_mode() == "llm"
    needed = _needed_roles(SecaConfig(proposer="rules"), objective=None, proposer=None,
                           checks=None)
    assert "proposer" not in needed and "target" in needed
