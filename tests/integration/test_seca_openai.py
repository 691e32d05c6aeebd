"""SECA against a target behind ``bbzo serve`` and the real ``openai`` client: the same decisions
as the local path for the same seed, and a run killed with SIGKILL then resumed sends no request
twice and ends where an uninterrupted run ends (checked from the server's own counts)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from seca_support import save_roomy_lm, save_tiny_embedder
from transformers import AutoTokenizer, GPT2LMHeadModel

from bbzo.attacks.seca.objective import LetterObjective, make_objective
from bbzo.attacks.seca.questions import load_questions
from bbzo.attacks.seca.run import SecaConfig, run_seca
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.ledger import Ledger
from bbzo.blackbox.serve import start_server
from bbzo.blackbox.targets.hf import HFTarget
from bbzo.blackbox.targets.openai_api import OpenAITarget
from bbzo.cli.main import cli

NAME = "tiny-letters"
KEY = "sk-test-seca"
LETTERS = ("A", "B", "C", "D")
IDENTITY_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
RAW = [("q1", "What is the capital of France?", ["Paris", "Berlin", "Rome", "Madrid"], "geo"),
       ("q2", "Which planet is red?", ["Mars", "Venus", "Earth", "Saturn"], "space"),
       ("q3", "How many legs has a spider?", ["eight", "six", "four", "ten"], "biology")]
# Letter probabilities of the API path are the local ones whenever every letter form is in the
# top 20 (checked below): the same two probabilities summed, read from the same logits, so they
# differ only by float32 rounding between batch shapes.
P_TOL = 1e-4
SPREAD = 2.0  # letter rows' own random parts scaled up: letter logits vary by ~0.3 with the text


def save_letter_lm(folder: Path) -> Path:
    """The roomy tiny LM edited so that every spelling of A-D ("A", " A"...) has a logit near 5
    at every position (other tokens near 0: all eight in any top 20), end-of-text near -10 (a
    one-token answer is never empty), and a chat template that renders a lone user message as
    its bare content: a served chat request then sees exactly the tokens of the local
    prompt."""
    save_roomy_lm(folder)
    model = GPT2LMHeadModel.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    v = torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(1))
    v /= v.norm()
    rows = model.transformer.wte.weight
    with torch.no_grad():
        model.transformer.ln_f.bias.copy_(5.0 * v)  # h·v ≈ 5 for every hidden state h
        for form in (f for x in LETTERS for f in (x, " " + x)):
            (i,) = tok.encode(form, add_special_tokens=False)
            rows[i] = SPREAD * rows[i] + v
        rows[tok.eos_token_id] -= 2.0 * v
    tok.chat_template = IDENTITY_TEMPLATE
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Models and a question file whose q1 and q3 the letter target answers 'correctly' (the
    answer is its top letter after the seed-0 shuffle) while q2's answer is its least likely."""
    root = tmp_path_factory.mktemp("seca-api")
    lm = save_roomy_lm(root / "lm")
    target_dir = save_letter_lm(root / "target")
    embedder = save_tiny_embedder(root / "emb")
    path = root / "questions.jsonl"
    path.write_text("".join(json.dumps({"id": i, "question": t, "choices": c, "answer": 0,
                                        "subject": s}) + "\n" for i, t, c, s in RAW))
    objective = LetterObjective(QueryLayer(HFTarget(str(target_dir), device="cpu")))
    lines = []
    for q, (qid, text, choices, subject) in zip(load_questions(path, seed=0), RAW, strict=True):
        logp = objective.evaluate(q, [text])[0]
        pick = int(np.argmin(logp)) if qid == "q2" else int(np.argmax(logp))
        lines.append(json.dumps({"id": qid, "question": text, "choices": choices,
                                 "answer": choices.index(q.choices[pick]), "subject": subject}))
    path.write_text("\n".join(lines) + "\n")
    local = SecaConfig(questions=str(path), target=f"hf:{target_dir}", proposer=f"hf:{lm}",
                       reference=f"hf:{lm}", embedder=f"embed:{embedder}", objective="letter",
                       iterations=2, similarity=0.05, coherence_ratio=1e6, device="cpu",
                       proposer_mode="llm", lexical=False)  # the LLM-only search this pins
    return local, target_dir


def serve(target_dir: Path):
    return start_server(HFTarget(str(target_dir), device="cpu"), api_key=KEY, model_name=NAME)


def over_api(config: SecaConfig, url: str) -> SecaConfig:
    return replace(config, target=f"openai:{NAME}", base_url=url)


@pytest.fixture(scope="module")
def runs(setup, tmp_path_factory):
    """The local run, and the same run with the target behind ``bbzo serve`` (its ledger)."""
    local, target_dir = setup
    root = tmp_path_factory.mktemp("runs")
    run_seca(local, out=root / "local")
    with pytest.MonkeyPatch.context() as mp, serve(target_dir) as server:
        mp.setenv("OPENAI_API_KEY", KEY)
        run_seca(over_api(local, server.url), out=root / "api")
    return records(root / "local"), records(root / "api"), root / "api" / "ledger.sqlite"


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


DECISIONS = ("id", "eligible", "predicted", "target_choice", "adversarial_question", "changed",
             "success", "steps", "stopped_early", "proposals", "unusable_proposals",
             "improvers", "feasible", "checks", "equivalence_passed", "coherence_passed",
             "target_requests", "requests")
PROBABILITIES = ("p_correct_before", "p_target_before", "p_target_after", "p_correct_after")


def assert_same_run(got: list[dict], want: list[dict]) -> None:
    """Same decisions, texts and request counts; probabilities within ``P_TOL``."""
    assert [r["id"] for r in got] == [r["id"] for r in want]
    for g, w in zip(got, want, strict=True):
        assert {k: g[k] for k in DECISIONS} == {k: w[k] for k in DECISIONS}
        for k in PROBABILITIES:
            assert (g[k] is None) == (w[k] is None), k
            if w[k] is not None:
                assert g[k] == pytest.approx(w[k], abs=P_TOL), k
        assert [{**t, "best": None} for t in g["trace"]] == \
            [{**t, "best": None} for t in w["trace"]]
        assert np.exp([t["best"] for t in g["trace"]]) == \
            pytest.approx(np.exp([t["best"] for t in w["trace"]]), abs=P_TOL)


def test_auto_picks_option_locally_and_letter_over_the_api(setup, monkeypatch):
    _, target_dir = setup
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    api = OpenAITarget(NAME, base_url="http://127.0.0.1:9/v1")
    assert make_objective("auto", QueryLayer(api)).name == "letter"
    assert make_objective("auto", QueryLayer(HFTarget(str(target_dir), device="cpu"))).name \
        == "option"  # not available over the API: the comparison below uses letter on both
    api.close()


def test_api_run_makes_the_local_runs_decisions(runs):
    local, api, ledger = runs
    # The comparison covers every branch: an ineligible question, a search that succeeds and
    # one that moves without succeeding.
    assert [r["eligible"] for r in local] == [True, False, True]
    eligible = [r for r in local if r["eligible"]]
    assert all(r["changed"] for r in eligible)
    assert {r["success"] for r in eligible} == {True, False}
    assert all(r["objective"] == "letter" and r["objective_estimate"] is False for r in api)
    # Every letter form came back in the top 20, so the API's values are exact (no floor).
    db = sqlite3.connect(ledger)
    answers = [json.loads(row[0]) for row in db.execute(
        "SELECT response FROM queries WHERE kind = 'letter_logprobs' AND status = 'ok'")]
    db.close()
    assert answers and all(all(a["output"]["coverage"].values()) for a in answers)
    assert_same_run(api, local)


JOB = "import sys; from bbzo.cli.main import cli; cli(sys.argv[1:], prog_name='bbzo')"


def seca_args(config: SecaConfig, url: str, out: Path) -> list[str]:
    """``bbzo`` arguments running ``config`` with the target behind ``url``."""
    return ["attack", "seca", "--questions", config.questions, "--target", f"openai:{NAME}",
            "--base-url", url, "--proposer", config.proposer, "--reference", config.reference,
            "--embedder", config.embedder, "--objective", "letter",
            "--iterations", str(config.iterations), "--similarity", str(config.similarity),
            "--coherence-ratio", str(config.coherence_ratio), "--device", "cpu",
            "--proposer-mode", config.proposer_mode, "--no-lexical", "--out", str(out), "--json"]


def answered(stats: dict) -> dict[str, int]:
    return {k: b["answered"] for k, b in stats["bodies"].items() if b["answered"]}


def api_answers_in_ledger(path: Path) -> int:
    """Target answers committed to the run's ledger (-1 while it cannot be read)."""
    try:
        db = sqlite3.connect(path)
        try:
            return db.execute("SELECT COUNT(*) FROM queries WHERE status = 'ok' AND target "
                              "LIKE 'openai:%'").fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError:
        return -1


def wait_for(condition, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_sigkill_then_resume_sends_no_request_twice(setup, runs, tmp_path, monkeypatch):
    local, target_dir = setup
    _, uninterrupted, _ = runs
    out = tmp_path / "killed"
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with serve(target_dir) as server:
        args = seca_args(local, server.url, out)
        with open(tmp_path / "killed.log", "w") as log:  # a fresh interpreter, killed below
            job = subprocess.Popen([sys.executable, "-c", JOB, *args], stdout=log, stderr=log)
        try:
            wait_for(lambda: len(answered(server.stats())) >= 12, "12 answers", timeout_s=120)
            # Freeze the job: new requests wait at the door; once every answer the server sent
            # is committed to the ledger, kill -9 it with requests held at the door.
            server.hold()
            wait_for(lambda: (lambda s: s["inflight"] == s["held"] >= 1
                              and api_answers_in_ledger(out / "ledger.sqlite")
                              == len(answered(s)))(server.stats()), "a quiet moment")
        finally:
            job.send_signal(signal.SIGKILL)
            job.wait()
        before = answered(server.stats())
        server.release()
        resumed = CliRunner().invoke(cli, [*args, "--resume"], prog_name="bbzo")
        assert resumed.exit_code == 0, resumed.stderr
        wait_for(lambda: all(a["status"] is not None for a in server.stats()["completions"]),
                 "the server to settle", timeout_s=10)
        stats = server.stats()
    assert 12 <= len(before) < len(answered(stats))  # killed mid-run, finished on resume
    assert set(answered(stats).values()) == {1}  # no body answered twice
    assert all(stats["bodies"][k]["received"] == 1 for k in before)  # nor sent again
    assert any(a["status"] == "abandoned" for a in stats["completions"])  # the held ones
    summary = json.loads(resumed.stdout)
    assert summary["questions"] == 3 and summary["stopped"] is None
    assert_same_run(records(out), uninterrupted)
    with Ledger(out / "ledger.sqlite") as ledger:
        assert ledger.summary().pending == 0
