"""The SECA proposer: tolerant parsing of small models' answers, the request it sends per
proposal (distinct samples, temperature 1.0, seeded instruction draws), both prompt formats."""

from __future__ import annotations

import json

import pytest
from seca_support import QUESTION, ScriptedTarget, save_roomy_lm

from bbzo.attacks.seca.proposer import (
    MAX_CHARS,
    STYLES,
    VERBS,
    LLMProposer,
    completion_prompt,
    parse_proposal,
)
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.targets.hf import HFTarget
from bbzo.errors import InputError


@pytest.mark.parametrize("text, opened, expected", [
    ('{"new_question": "Which city is France\'s capital?"}', False,
     ("Which city is France's capital?", "json")),
    ('Sure! Here it is: {"new_question": "Which  city\\n is it?"} Hope it helps', False,
     ("Which city is it?", "json")),
    ('Which city is France\'s capital?"}\n{"question": "junk', True,
     ("Which city is France's capital?", "json")),
    ('Which city is \\"the\\" capital?"} more', True, ('Which city is "the" capital?', "json")),
    ('Which city is cut off by max_tokens', True, ("Which city is cut off by max_tokens",
                                                   "fallback")),
    ('I would say "Which city hosts the French government?" is a fine rewrite.', False,
     ("Which city hosts the French government?", "fallback")),
    ("\n\nNew question: Which city is the French capital?\nThanks", False,
     ("Which city is the French capital?", "fallback")),
    ("   \n  ", False, (None, "failed")),
    ("x" * (MAX_CHARS + 1), False, (None, "failed")),
])
def test_parse_proposal(text, opened, expected):
    assert parse_proposal(text, opened=opened) == expected


def test_completion_prompt_leaves_the_json_string_open():
    prompt = completion_prompt('Say "hi"?', "Reword", "more concisely")
    lines = prompt.splitlines()
    assert lines[0].startswith("Reword each question more concisely.")
    for line in lines[1:-1]:
        assert set(json.loads(line)) == {"question", "new_question"}
    assert lines[-1] == '{"question": "Say \\"hi\\"?", "new_question": "'
    assert json.loads(lines[-1] + 'done"}')["question"] == 'Say "hi"?'


def recording_target():
    return ScriptedTarget(lambda r: {"text": json.dumps({"new_question": f"rewrite {r.sample}"})},
                          ["chat", "generate"])


def test_chat_format_requests_and_parse_counts():
    target = recording_target()
    proposer = LLMProposer(QueryLayer(target), seed=5, fmt="chat")
    out = proposer.propose(QUESTION, ["P1", "P2"], 3, step=2)
    assert out == [f"rewrite {i}" for i in range(12, 18)]  # samples continue across steps
    assert [r.sample for r in target.seen] == list(range(12, 18))
    first = target.seen[0]
    assert first.kind == "chat" and first.params["temperature"] == 1.0
    system, user = first.payload["messages"]
    assert system["content"] == "You are an expert in geography."
    assert "P1" in user["content"] and '"new_question"' in user["content"]
    assert "A. Paris" in user["content"]  # the correct answer is named for the rewriter
    assert any(v in user["content"] or v.lower() in user["content"] for v in VERBS)
    assert any(s in user["content"] for s in STYLES)
    assert proposer.stats.to_dict() == {"proposals": 6, "json": 6, "fallback": 0, "failed": 0}


def test_instruction_draws_follow_the_seed():
    def prompts(seed):
        target = recording_target()
        LLMProposer(QueryLayer(target), seed=seed).propose(QUESTION, ["P"] * 3, 3, step=0)
        return [r.payload["messages"][1]["content"] for r in target.seen]

    assert prompts(1) == prompts(1)
    assert prompts(1) != prompts(2)
    assert len(set(prompts(1))) > 1  # instructions vary between proposals


def test_completion_format_on_a_tiny_lm(tmp_path):
    lm = HFTarget(str(save_roomy_lm(tmp_path / "lm")), device="cpu", max_batch=8)
    layer = QueryLayer(lm)
    proposer = LLMProposer(layer, seed=0, fmt="completion", max_tokens=8)
    out = proposer.propose(QUESTION, [QUESTION.question] * 2, 2, step=0)
    assert len(out) == 4
    assert layer.stats.sent == 4  # distinct samples: four fresh draws, none deduplicated
    again = LLMProposer(QueryLayer(lm), seed=0, fmt="completion", max_tokens=8)
    assert again.propose(QUESTION, [QUESTION.question] * 2, 2, step=0) == out
    stats = proposer.stats
    assert stats.proposals == 4 == stats.json + stats.fallback + stats.failed


def test_bad_settings():
    layer = QueryLayer(recording_target())
    with pytest.raises(InputError, match="proposer format"):
        LLMProposer(layer, fmt="poem")
    chat_only = QueryLayer(ScriptedTarget(lambda r: {"text": ""}, ["chat"]))
    with pytest.raises(InputError, match="cannot answer generate requests"):
        LLMProposer(chat_only, fmt="completion")


def test_completion_requests_end_at_the_line_end_and_chat_requests_do_not():
    target = recording_target()
    LLMProposer(QueryLayer(target), fmt="completion").propose(QUESTION, ["P"], 2, step=0)
    LLMProposer(QueryLayer(target), fmt="chat").propose(QUESTION, ["P"], 1, step=0)
    first, second, chat = target.seen
    assert first.kind == second.kind == "generate"
    assert first.params["stop"] == second.params["stop"] == "\n"
    assert chat.kind == "chat" and "stop" not in chat.params
    # The parser reads the completion's first line only once it closes the string, so cutting
    # the answer at the newline leaves every such proposal as it was.
    full = 'Which city is the capital?"}\n{"question": "Q", "new_question": "R"}'
    assert parse_proposal(full.split("\n")[0], opened=True) == parse_proposal(full, opened=True)
