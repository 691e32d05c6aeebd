"""One text request (``bbzo.blackbox.query.text``) and one option formatter
(``Question.options_text``) behind the proposer, the checkers' judge, the sampling objective
and the evaluation judge; the requests they build are the ones they built before (same ledger
keys)."""

from __future__ import annotations

import pytest
from seca_support import QUESTION, ScriptedTarget

from bbzo.attacks.seca.constraints import LLMJudge
from bbzo.attacks.seca.evaluate import judge_prompt
from bbzo.attacks.seca.objective import SamplingObjective, letter_prompt
from bbzo.attacks.seca.proposer import LLMProposer
from bbzo.blackbox.protocol import Request
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.text import text_kind, text_request
from bbzo.errors import InputError


def target(*kinds: str) -> ScriptedTarget:
    return ScriptedTarget(lambda r: {"text": '{"new_question": "Q?"}'}, kinds, "t")


def test_chat_and_generate_forms():
    params = {"temperature": 0, "max_tokens": 5}
    assert text_request("chat", "hi", params) == Request(
        "chat", {"messages": [{"role": "user", "content": "hi"}]}, params)
    assert text_request("chat", "hi", params, system="sys", sample=3) == Request(
        "chat", {"messages": [{"role": "system", "content": "sys"},
                              {"role": "user", "content": "hi"}]}, params, sample=3)
    assert text_request("generate", "hi", params) == Request("generate", {"prompt": "hi"},
                                                             params)
    assert text_request("generate", "hi", params, system="sys").payload == {
        "prompt": "sys\n\nhi"}
    with pytest.raises(InputError, match="kind must be one of"):
        text_request("embed", "hi", params)


def test_text_kind_takes_the_first_answered_kind_or_refuses():
    assert text_kind(target("chat", "generate"), ("generate", "chat"), "x") == "generate"
    assert text_kind(target("chat"), ("generate", "chat"), "x") == "chat"
    with pytest.raises(InputError, match="judge t cannot answer chat or generate requests"):
        text_kind(target("embed"), ("chat", "generate"), "judge")
    with pytest.raises(InputError, match="must be among"):
        text_kind(target("chat"), ("embed",), "x")


@pytest.mark.parametrize("make", [
    lambda layer: LLMJudge(layer),
    lambda layer: LLMProposer(layer),
    lambda layer: SamplingObjective(layer),
], ids=["judge", "proposer", "sampling"])
def test_every_text_writer_refuses_a_target_without_text(make):
    with pytest.raises(InputError, match="t cannot answer .*generate.* requests; choose"):
        make(QueryLayer(target("embed")))


def test_proposer_requests_keep_their_form():
    for kinds, kind in ((["chat", "generate"], "chat"), (["generate"], "generate")):
        seen = target(*kinds)
        LLMProposer(QueryLayer(seen), fmt="chat").propose(QUESTION, ["P?"], 1, step=0)
        [request] = seen.seen
        assert request.kind == kind and request.sample == 0
        system = "You are an expert in geography."
        if kind == "chat":
            first, second = request.payload["messages"]
            assert first == {"role": "system", "content": system}
            assert second["role"] == "user" and second["content"].endswith('"}')
        else:
            assert request.payload["prompt"].startswith(system + "\n\n")


def test_options_are_formatted_in_one_place():
    assert QUESTION.option_text(1) == "B. Berlin"
    assert QUESTION.options_text() == "A. Paris; B. Berlin; C. Rome; D. Madrid"
    assert "\nA. Paris\nB. Berlin\nC. Rome\nD. Madrid\nThe correct answer" in letter_prompt(
        QUESTION, "Q?")
    for prompt in (judge_prompt(QUESTION, "Q?", "B"), LLMJudge(QueryLayer(target("chat")))
                   .prompt(QUESTION, "Q?")):
        assert f"Options: {QUESTION.options_text()}\n" in prompt
        assert "Correct answer" in prompt and "A. Paris\n" in prompt
    seen = target("chat")
    LLMProposer(QueryLayer(seen), fmt="chat").propose(QUESTION, ["P?"], 3, step=0)
    for request in seen.seen:
        user = request.payload["messages"][1]["content"]
        assert QUESTION.options_text() in user and "A. Paris" in user
