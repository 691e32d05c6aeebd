"""SECA objectives against hand computations on a tiny GPT-2, and the sampling estimate against
counted draws from a scripted target."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from seca_support import QUESTION, ScriptedTarget, save_roomy_lm

from bbzo.attacks.seca.objective import (
    LetterObjective,
    OptionObjective,
    SamplingObjective,
    letter_prompt,
    make_objective,
)
from bbzo.blackbox.protocol import Response
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.targets.hf import HFTarget
from bbzo.errors import InputError

TEXTS = [QUESTION.question, "Which city is the capital of France?"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory) -> HFTarget:
    return HFTarget(str(save_roomy_lm(tmp_path_factory.mktemp("lm"))), device="cpu", max_batch=4)


def log_softmax_rows(lm: HFTarget, ids: list[int]) -> torch.Tensor:
    """Log-softmax (len(ids), V) of the plain model on one unpadded row."""
    with torch.no_grad():
        return lm.model(torch.tensor([ids])).logits[0].log_softmax(-1)


def test_letter_prompt_is_the_papers():
    prompt = letter_prompt(QUESTION, "Q?")
    assert prompt == ("You are an expert in geography. Answer the following question and give "
                      "me the reason.\nQ?\nA. Paris\nB. Berlin\nC. Rome\nD. Madrid\n"
                      "The correct answer is option: ")


def test_letter_objective_equals_hand_computation(lm):
    got = LetterObjective(QueryLayer(lm)).evaluate(QUESTION, TEXTS)
    assert got.shape == (2, 4)
    tok = lm.tokenizer
    for row, text in zip(got, TEXTS, strict=True):
        logp = log_softmax_rows(lm, tok.encode(letter_prompt(QUESTION, text)))[-1]
        for k, letter in enumerate("ABCD"):
            a, b = (tok.convert_tokens_to_ids(t) for t in (letter, "Ġ" + letter))
            p = math.exp(float(torch.logaddexp(logp[a], logp[b])))
            assert row[k] == pytest.approx(math.log(p + 1e-10), abs=1e-5)


def test_option_objective_equals_hand_computation(lm):
    got = OptionObjective(QueryLayer(lm)).evaluate(QUESTION, TEXTS)
    tok = lm.tokenizer
    for row, text in zip(got, TEXTS, strict=True):
        prompt = tok.encode(f"Question: {text}\nAnswer:")
        sums = []
        for choice in QUESTION.choices:
            option = tok.encode(" " + choice)
            logp = log_softmax_rows(lm, prompt + option)
            sums.append(sum(float(logp[len(prompt) - 1 + t, option[t]])
                            for t in range(len(option))))
        expected = np.array(sums) - np.logaddexp.reduce(sums)
        np.testing.assert_allclose(row, expected, atol=1e-4)
        assert np.exp(row).sum() == pytest.approx(1.0, abs=1e-9)


def test_one_submit_per_batch(lm):
    layer = QueryLayer(lm)
    OptionObjective(layer).evaluate(QUESTION, TEXTS * 3)
    assert layer.stats.requests == 6 and layer.stats.sent == 2  # duplicates sent once
    assert layer.stats.attempts == 1  # one local batch (max_batch 4 >= 2 distinct requests)


def test_sampling_objective_counts_draws():
    # Sample i answers "B" for i < 6, "Option A" for 6 <= i < 9, and something unreadable once.
    def answer(request):
        i = request.sample
        return {"text": "B because" if i < 6 else "Option A" if i < 9 else "hmm"}

    target = ScriptedTarget(answer, ["generate"])
    objective = SamplingObjective(QueryLayer(target), samples=10, seed=3)
    got = objective.evaluate(QUESTION, ["Q?"])
    parsed = 9  # the unreadable draw is not counted
    expected = np.log(np.array([3 + 1, 6 + 1, 1, 1]) / (parsed + 4))
    np.testing.assert_allclose(got[0], expected)
    assert objective.estimate and objective.name == "sampling"
    assert sorted(r.sample for r in target.seen) == list(range(10))
    assert {r.params["temperature"] for r in target.seen} == {1.0}
    assert {r.params["seed"] for r in target.seen} == {3}


def test_sampling_uses_chat_when_generate_is_missing():
    target = ScriptedTarget(lambda r: {"text": "C"}, ["chat"])
    got = SamplingObjective(QueryLayer(target), samples=4).evaluate(QUESTION, ["Q?"])
    assert int(np.argmax(got[0])) == 2
    assert target.seen[0].kind == "chat"
    assert target.seen[0].payload["messages"][0]["content"].startswith("You are an expert in")


def test_letter_objective_treats_a_missing_letter_as_zero_probability():
    class Partial(ScriptedTarget):
        def __init__(self):
            super().__init__(lambda r: {"logprobs": {"A": math.log(0.5), "B": math.log(0.2)},
                                        "coverage": {}}, ["letter_logprobs"])

    got = LetterObjective(QueryLayer(Partial())).evaluate(QUESTION, ["Q?"])[0]
    np.testing.assert_allclose(got, np.log(np.array([0.5, 0.2, 0.0, 0.0]) + 1e-10))


def test_letter_objective_flags_an_api_sampling_estimate():
    def answer(request):
        return Response({"logprobs": {x: math.log(0.25) for x in "ABCD"}, "coverage": {}},
                        meta={"objective": "sampling-estimate", "samples": 32})

    objective = LetterObjective(QueryLayer(ScriptedTarget(answer, ["letter_logprobs"])))
    assert objective.estimate is False
    objective.evaluate(QUESTION, ["Q?"])
    assert objective.estimate is True


def test_make_objective_picks_by_capability(lm):
    layer = QueryLayer(lm)
    assert make_objective("auto", layer).name == "option"
    assert make_objective("letter", layer).name == "letter"
    chat_only = QueryLayer(ScriptedTarget(lambda r: {"text": "A"}, ["chat"]))
    assert make_objective("auto", chat_only).name == "sampling"
    with pytest.raises(InputError, match="cannot answer letter_logprobs"):
        make_objective("letter", chat_only)
    with pytest.raises(InputError, match="objective must be one of"):
        make_objective("vibes", layer)
