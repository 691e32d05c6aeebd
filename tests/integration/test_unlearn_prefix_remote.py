"""ECO's fallback for API-only models, the prompt prefix, on an ``openai:`` target behind a real
``bbzo serve`` on 127.0.0.1 (a tiny random GPT-2): what the server received, checked from its
own log of body hashes; the answers; the refusals of what an API model cannot do."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny import save_tiny_lm

from bbzo.blackbox.protocol import Request, canonical_json
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.serve import start_server
from bbzo.blackbox.targets.hf import HFTarget
from bbzo.blackbox.targets.openai_api import OpenAITarget
from bbzo.cli.main import cli
from bbzo.unlearn.guard import GuardedLM
from bbzo.unlearn.run import load_artifact

NAME = "tiny-guarded"
KEY = "sk-test-prefix"
FORGET = [f"Which book did the wizard Zorblax Quennel write in year {y}?" for y in range(1, 13)]
RETAIN = [f"What is {a} plus {a + 1} in ordinary arithmetic?" for a in range(1, 13)]
PARAMS = {"max_tokens": 3, "temperature": 0, "logprobs": True, "top_logprobs": 2}


def _write(path: Path, questions: list[str]) -> Path:
    path.write_text("".join(json.dumps({"question": q, "choices": ["red", "green", "blue"],
                                        "answer": i % 3}) + "\n"
                            for i, q in enumerate(questions)))
    return path


def run(server, *args: object):
    env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": server.url}
    return CliRunner().invoke(cli, list(map(str, args)), prog_name="bbzo", env=env)


def completions(server) -> int:
    return len(server.stats()["completions"])


def body_key(messages: list[dict]) -> str:
    """The server's log key of the chat body ``OpenAITarget`` sends for ``messages``."""
    body = {"model": NAME, "messages": messages, "max_completion_tokens": PARAMS["max_tokens"],
            **{k: v for k, v in PARAMS.items() if k != "max_tokens"}}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The server, the question files, and a prefix guard fitted with ``openai:`` as its
    model (the fit sends the server nothing: prefix mode has no strength search)."""
    root = tmp_path_factory.mktemp("prefix-remote")
    files = {"forget": _write(root / "forget.jsonl", FORGET),
             "retain": _write(root / "retain.jsonl", RETAIN), "root": root}
    lm = HFTarget(str(save_tiny_lm(root / "lm")), device="cpu")
    with start_server(lm, api_key=KEY, model_name=NAME) as server:
        result = run(server, "unlearn", "fit", "--model", f"openai:{NAME}", "--mode", "prefix",
                     "--forget", files["forget"], "--retain", files["retain"],
                     "--target-recall", "0.5", "--out", root / "guard")
        assert result.exit_code == 0, result.output
        assert completions(server) == 0
        yield server, files, root / "guard"


def test_fit_on_an_api_model_says_prefix_ran(setup):
    server, _, artifact = setup
    summary = json.loads((artifact / "summary.json").read_text())
    report = json.loads((artifact / "report.json").read_text())
    assert summary["mode"] == report["mode"] == "prefix"
    assert summary["zo_queries"] == 0 and "strength_search" not in report
    guard, options = load_artifact(artifact)
    assert guard.mode == "prefix" and options["mode"] == "prefix"
    assert guard.model_id == f"openai:{NAME}@{server.url}"


def test_flagged_prompts_reach_the_server_prefixed_and_others_unchanged(setup):
    server, _, artifact = setup
    guard, _ = load_artifact(artifact)
    guard.prefix = "Forget Zorblax."  # the default's tokens overflow the tiny model's 128
    flagged, plain, plain2 = FORGET[0], RETAIN[0], RETAIN[1]
    assert guard.flags([flagged, plain, plain2]).tolist() == [True, False, False]
    user = [{"role": "user", "content": text} for text in (flagged, plain, plain2)]
    requests = [Request("chat", {"messages": [user[0]]}, PARAMS),
                Request("chat", {"messages": [user[1]]}, PARAMS),
                Request("generate", {"prompt": flagged}, PARAMS),
                Request("generate", {"prompt": plain2}, PARAMS)]
    system = {"role": "system", "content": guard.prefix}
    prefixed_user = {"role": "user", "content": f"{guard.prefix}\n\n{flagged}"}
    expected = [[system, user[0]], [user[1]], [prefixed_user], [user[2]]]
    target = OpenAITarget(NAME, base_url=server.url, api_key=KEY)
    try:
        guarded = QueryLayer(GuardedLM(target, guard))
        seen = completions(server)
        answers = [guarded.submit([r])[0].output for r in requests]  # one at a time: no batching
        received = [c["key"] for c in server.stats()["completions"][seen:]]
        assert received == [body_key(m) for m in expected]
        direct = QueryLayer(target)
        same = [direct.submit([Request("chat", {"messages": m}, PARAMS)])[0].output
                for m in expected]
        bare = direct.submit([requests[0]])[0].output
    finally:
        target.close()
    assert answers == same  # what the server answers to exactly those bodies
    assert answers[0]["logprobs"] != bare["logprobs"]  # the prefix changed the flagged answer


@pytest.mark.parametrize("mode,want", [("eco", "no input embeddings, so mode eco cannot run"),
                                       ("prefix", "gives no answer-option log-likelihoods")])
def test_eval_on_an_api_model_is_refused_in_one_line(setup, tmp_path, mode, want):
    server, files, artifact = setup
    seen = completions(server)
    result = run(server, "unlearn", "eval", artifact, "--mode", mode,
                 "--forget", files["forget"], "--retain", files["retain"],
                 "--out", tmp_path / "o")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and want in lines[0]
    assert f"openai:{NAME}@{server.url}" in lines[0]
    assert not (tmp_path / "o").exists() and completions(server) == seen
