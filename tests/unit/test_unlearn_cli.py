"""``bbzo unlearn fit|eval|serve`` on a tiny random GPT-2 and tiny question files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from openai import OpenAI
from tiny import save_tiny_lm

from bbzo.blackbox.serve import start_server
from bbzo.blackbox.targets.hf import HFTarget
from bbzo.cli.main import cli
from bbzo.unlearn.guard import GuardedLM
from bbzo.unlearn.run import load_artifact

FORGET = [f"Which book did the wizard Zorblax Quennel write in year {y}?" for y in range(1, 13)]
RETAIN = [f"What is {a} plus {a + 1} in ordinary arithmetic?" for a in range(1, 13)]


def _write(path: Path, questions: list[str]) -> Path:
    path.write_text("".join(json.dumps({"question": q, "choices": ["red", "green", "blue"],
                                        "answer": i % 3}) + "\n"
                            for i, q in enumerate(questions)))
    return path


def run(*args: str, **env: str):
    return CliRunner().invoke(cli, list(map(str, args)), prog_name="bbzo", env=env)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("unlearn")
    return {"model": f"hf:{save_tiny_lm(root / 'lm')}",
            "other": f"hf:{save_tiny_lm(root / 'other', seed=1)}",
            "forget": _write(root / "forget.jsonl", FORGET),
            "retain": _write(root / "retain.jsonl", RETAIN), "root": root}


@pytest.fixture(scope="module")
def artifact(files) -> Path:
    out = files["root"] / "guard"
    result = run("unlearn", "fit", "--model", files["model"], "--forget", files["forget"],
                 "--retain", files["retain"], "--k", "all", "--evaluations", "4",
                 "--target-recall", "0.5", "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_fit_writes_a_guard_artifact(artifact):
    report = json.loads((artifact / "report.json").read_text())
    summary = json.loads((artifact / "summary.json").read_text())
    search = report["strength_search"]
    assert search["method"] == "zo" and search["evaluations"] == 4
    assert search["model_requests"] == summary["zo_queries"] > 0
    assert len(json.loads((artifact / "search.json").read_text())) == 4
    assert report["heldout_forget"] == 6 and report["fit_forget"] == 6
    guard, options = load_artifact(artifact)
    assert guard.strength == summary["strength"] and options["evaluations"] == 4


def test_eval_summary_has_before_and_after(artifact, files):
    out = files["root"] / "eval"
    result = run("unlearn", "eval", artifact, "--forget", artifact / "heldout_forget.jsonl",
                 "--retain", artifact / "heldout_retain.jsonl", "--out", out)
    assert result.exit_code == 0, result.output
    s = json.loads((out / "summary.json").read_text())
    for key in ("forget_accuracy_before", "forget_accuracy", "retain_accuracy_before",
                "retain_accuracy", "classifier_fpr", "classifier_fnr", "strength", "zo_queries"):
        assert key in s
    assert s["classifier_fpr"] == 0.0 and s["classifier_fnr"] == 0.0  # separable topics
    assert s["retain_accuracy"] == s["retain_accuracy_before"]  # unflagged: untouched
    assert s["forget_questions"] == 6 and s["mode"] == "eco"


@pytest.mark.parametrize("case", ["overlap", "corruption", "no_embeddings", "other_model"])
def test_bad_input_is_one_line_and_exit_2(case, files, artifact, tmp_path):
    common = ["--forget", files["forget"], "--retain", files["retain"], "--out", tmp_path / "o"]
    if case == "overlap":
        args = ["unlearn", "fit", "--model", files["model"], "--forget", files["forget"],
                "--retain", files["forget"], "--out", tmp_path / "o"]
    elif case == "corruption":
        args = ["unlearn", "fit", "--model", files["model"], "--corruption", "blur", *common]
    elif case == "no_embeddings":
        args = ["unlearn", "fit", "--model", "openai:gpt-x", *common]
    else:
        args = ["unlearn", "eval", artifact, "--model", files["other"], *common]
    result = run(*args, OPENAI_API_KEY="unused")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    want = {"overlap": "in both", "corruption": "unknown corruption 'blur'",
            "no_embeddings": "no input embeddings", "other_model": "fitted for"}[case]
    assert want in lines[0]
    assert not (tmp_path / "o").exists()


def test_serve_answers_flagged_prompts_corrupted_and_others_as_bbzo_serve(artifact, files):
    guard, _ = load_artifact(artifact)
    guard.strength = [100.0]  # strong enough to move the tiny model's every answer
    lm = HFTarget(files["model"][3:], device="cpu")
    flagged = f"Question: {FORGET[0]}\nAnswer:"
    plain = f"Question: {RETAIN[0]}\nAnswer:"
    body = {"max_tokens": 3, "temperature": 0, "logprobs": True, "top_logprobs": 2}

    def ask(target) -> list:
        with start_server(target, model_name="m") as server:
            client = OpenAI(base_url=server.url, api_key="unused", max_retries=0)
            answers = [client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": c}], **body).choices[0]
                for c in (flagged, plain)]
            client.close()
        return [(a.message.content, [(t.token, t.logprob) for t in a.logprobs.content])
                for a in answers]

    guarded, unguarded = ask(GuardedLM(lm, guard)), ask(lm)
    assert guarded[1] == unguarded[1]  # unflagged: exactly what bbzo serve answers
    assert guarded[0][1] != unguarded[0][1]  # flagged: the corrupted model's answer
