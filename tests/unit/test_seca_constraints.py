"""SECA's checks: option leaks, embedding similarity, perplexity against a hand computation,
the LLM judge and its parser (failures counted, never silent), and cheapest-first chaining."""

from __future__ import annotations

import json
import math

import pytest
import torch
from seca_support import QUESTION, ScriptedTarget, save_roomy_lm

from bbzo.attacks.seca.constraints import (
    CRITERIA,
    Checks,
    EmbeddingSimilarity,
    LLMJudge,
    OptionLeak,
    PerplexityCoherence,
    Verdict,
    parse_judgement,
)
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.targets.hf import HFTarget
from bbzo.errors import InputError


def test_option_leak():
    texts = ["Which city, Paris perhaps, is the capital?", "Which Parisian city is the capital?",
             "Is the capital ROME?", "Which city is the capital of France?"]
    verdicts = [v[0] for v in OptionLeak().check(QUESTION, texts)]
    assert [v.passed for v in verdicts] == [False, True, False, True]
    assert [v.score for v in verdicts] == [1.0, 0.0, 1.0, 0.0]
    assert "Paris" in verdicts[0].detail and verdicts[0].aspect == "answer"
    # An option the original already names is not a leak.
    q = QUESTION.__class__("q", "Is Paris or Rome the capital of France?", QUESTION.choices, 0)
    assert OptionLeak().check(q, ["Which of Paris and Rome is France's capital?"])[0][0].passed


def embedder(vectors: dict[str, list[float]]) -> ScriptedTarget:
    return ScriptedTarget(lambda r: {"embeddings": [vectors[r.payload["texts"][0]]]}, ["embed"])


def test_embedding_similarity_threshold_and_one_request_per_text():
    angle = {"close": 0.3, "far": 1.0}  # radians from the original's vector
    vectors = {QUESTION.question: [2.0, 0.0]}
    vectors |= {k: [math.cos(a) * 3, math.sin(a) * 3] for k, a in angle.items()}
    target = embedder(vectors)
    verdicts = EmbeddingSimilarity(QueryLayer(target), threshold=0.9).check(
        QUESTION, ["close", "far"])
    close, far = (v[0] for v in verdicts)
    assert close.score == pytest.approx(math.cos(0.3)) and close.passed  # 0.955
    assert far.score == pytest.approx(math.cos(1.0)) and not far.passed  # 0.540
    assert close.aspect == "equivalence"
    assert [r.payload["texts"] for r in target.seen] == [[QUESTION.question], ["close"], ["far"]]
    with pytest.raises(InputError, match="similarity threshold"):
        EmbeddingSimilarity(QueryLayer(target), threshold=1.5)


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> HFTarget:
    return HFTarget(str(save_roomy_lm(tmp_path_factory.mktemp("lm"))), device="cpu", max_batch=8)


def test_perplexity_equals_hand_computation(lm):
    texts = [QUESTION.question, "Which city is the capital of France?", "capital capital the"]
    ppl = PerplexityCoherence(QueryLayer(lm)).perplexities(texts)
    tok = lm.tokenizer
    prompt = tok.encode("Question:")
    for got, text in zip(ppl, texts, strict=True):
        ids = tok.encode(" " + text)
        with torch.no_grad():
            logp = lm.model(torch.tensor([prompt + ids])).logits[0].log_softmax(-1)
        total = sum(float(logp[len(prompt) - 1 + t, ids[t]]) for t in range(len(ids)))
        assert got == pytest.approx(math.exp(-total / len(ids)), rel=1e-4)


def test_perplexity_ratio_decides(lm):
    texts = ["Which city is the capital of France?", "capital capital the"]
    check = PerplexityCoherence(QueryLayer(lm), ratio=1.0)
    ppl = check.perplexities([QUESTION.question, *texts])
    for verdict, p in zip((v[0] for v in check.check(QUESTION, texts)), ppl[1:], strict=True):
        assert verdict.score == pytest.approx(p / ppl[0])
        assert verdict.passed == (p <= ppl[0]) and verdict.aspect == "coherence"
    loose = PerplexityCoherence(QueryLayer(lm), ratio=1e9).check(QUESTION, texts)
    assert all(v[0].passed for v in loose)


def test_parse_judgement():
    full = {k: 1 for k in CRITERIA} | {"fluent": 0}
    assert parse_judgement("Sure: " + json.dumps(full) + " done") == full
    loose = "mutual_entailment: 1, no_added_information = 0\nsame_answer: yes, fluent: true"
    assert parse_judgement(loose) == {"mutual_entailment": 1, "no_added_information": 0,
                                      "same_answer": 1, "fluent": 1}
    assert parse_judgement("Paris is the capital of France.") == {}


def test_judge_verdicts_and_counted_parse_failures():
    replies = {
        "good": '{"mutual_entailment": 1, "no_added_information": 1, '
                '"no_omitted_information": 1, "same_meaning": 1, "same_answer": 1, "fluent": 1}',
        "changed": '{"mutual_entailment": 1, "no_added_information": 1, '
                   '"no_omitted_information": 1, "same_meaning": 0, "same_answer": 0, '
                   '"fluent": 1}',
        "garbled": "Question 1: Red Planet\nQuestion 2: Red Planet",
    }
    target = ScriptedTarget(
        lambda r: {"text": replies[r.payload["messages"][0]["content"].split("Rewritten: ")[1]
                                   .split("\n")[0]]}, ["chat"])
    verdicts = LLMJudge(QueryLayer(target)).check(QUESTION, list(replies))
    (good_eq, good_co), (bad_eq, bad_co), (unread_eq, unread_co) = verdicts
    assert good_eq.passed and good_eq.score == 1.0 and good_co.passed
    assert not bad_eq.passed and bad_eq.score == pytest.approx(0.6)
    assert "same_meaning" in bad_eq.detail and "same_answer" in bad_eq.detail and bad_co.passed
    for v in (unread_eq, unread_co):
        assert not v.passed and v.parse_failed and v.score is None
        assert "could not be parsed" in v.detail
    request = target.seen[0]
    assert request.params["temperature"] == 0
    prompt = request.payload["messages"][0]["content"]
    assert "Correct answer of the original: A. Paris" in prompt
    assert all(k in prompt for k in [*CRITERIA, "fluent"])


def test_judge_of_a_question_without_options():
    """``attack check`` pairs carry no options: the judge is asked without options or answer."""
    reply = json.dumps({k: 1 for k in [*CRITERIA, "fluent"]})
    target = ScriptedTarget(lambda r: {"text": reply}, ["chat"])
    bare = QUESTION.__class__("p1", QUESTION.question, (), 0)
    (equivalent, fluent), = LLMJudge(QueryLayer(target)).check(bare, ["Which is France's capital?"])
    assert equivalent.passed and fluent.passed
    prompt = target.seen[0].payload["messages"][0]["content"]
    assert "Options:" not in prompt and "Correct answer of the original" not in prompt
    assert "Rewritten: Which is France's capital?" in prompt
    assert all(k in prompt for k in [*CRITERIA, "fluent"])


class Rule:
    """A constraint passing texts by a rule; records what it was asked."""

    def __init__(self, name, rule):
        self.name, self.rule, self.asked = name, rule, []

    def check(self, question, texts):
        self.asked.append(list(texts))
        return [[Verdict(self.name, "equivalence", self.rule(t), None, "")] for t in texts]


def test_checks_send_only_survivors_onward():
    first, second = Rule("first", lambda t: "a" in t), Rule("second", lambda t: "b" in t)
    third = Rule("third", lambda t: True)
    verdicts = Checks([first, second, third]).check(QUESTION, ["ab", "a", "b", "xyz"])
    assert first.asked == [["ab", "a", "b", "xyz"]]
    assert second.asked == [["ab", "a"]] and third.asked == [["ab"]]
    assert [[v.name for v in vs] for vs in verdicts] == [["first", "second", "third"],
                                                         ["first", "second"], ["first"],
                                                         ["first"]]
    assert [all(v.passed for v in vs) for vs in verdicts] == [True, False, False, False]
    assert Checks([first]).check(QUESTION, []) == []
