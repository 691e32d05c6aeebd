"""``run_seca`` end to end on tiny models: the run folder, eligibility, one loaded model per
spec, resume without re-sending (counted in the ledger), and the shared query budget."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from seca_support import ScriptedProposer, save_roomy_lm, save_tiny_embedder

import bbzo.attacks.seca.run as seca_run
import bbzo.runs.roles as run_roles
from bbzo.attacks.seca.objective import OptionObjective
from bbzo.attacks.seca.questions import Question
from bbzo.attacks.seca.run import SecaConfig, run_seca
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.ledger import Ledger
from bbzo.blackbox.targets.hf import HFTarget
from bbzo.errors import InputError, TargetError
from bbzo.runs import MANIFEST

RECORD_KEYS = {
    "id", "subject", "original_question", "adversarial_question", "choices", "answer",
    "target_choice", "eligible", "p_target_before", "p_target_after", "p_correct_before",
    "p_correct_after", "success", "equivalence_verdicts", "equivalence_passed",
    "coherence_verdicts", "coherence_passed", "answer_verdicts", "queries", "requests",
    "target_requests", "tokens", "cost", "objective", "objective_estimate", "checks", "trace"}
SUMMARY_KEYS = {"questions", "eligible", "attacked", "asr", "mean_queries_per_question",
                "mean_queries_per_success", "equivalence_pass_rate", "coherence_pass_rate",
                "per_subject", "judge_parse_failures", "stopped", "cost"}
RAW = [("q1", "What is the capital of France?", ["Paris", "Berlin", "Rome", "Madrid"], "geo"),
       ("q2", "Which planet is red?", ["Mars", "Venus", "Earth", "Saturn"], "space"),
       ("q3", "How many legs has a spider?", ["eight", "six", "four", "ten"], "biology")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny models, and a question file whose q1 and q3 the tiny LM answers 'correctly' (their
    answer is its top option) while q2's answer is its least likely option."""
    root = tmp_path_factory.mktemp("seca")
    lm = save_roomy_lm(root / "lm")
    embedder = save_tiny_embedder(root / "emb")
    objective = OptionObjective(QueryLayer(HFTarget(str(lm), device="cpu")))
    lines = []
    for qid, text, choices, subject in RAW:
        q = Question(qid, text, tuple(choices), 0, subject)
        logp = objective.evaluate(q, [text])[0]
        answer = int(np.argmin(logp)) if qid == "q2" else int(np.argmax(logp))
        lines.append(json.dumps({"id": qid, "question": text, "choices": choices,
                                 "answer": answer, "subject": subject}))
    path = root / "questions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    config = SecaConfig(questions=str(path), target=f"hf:{lm}", proposer=f"hf:{lm}",
                        reference=f"hf:{lm}", embedder=f"embed:{embedder}",
                        iterations=2, similarity=0.05, coherence_ratio=1e6, shuffle=False,
                        proposer_max_tokens=8, judge_max_tokens=8, device="cpu",
                        proposer_mode="llm", lexical=False)
    return config


@pytest.fixture(scope="module")
def finished(setup, tmp_path_factory):
    """One complete run (shared by the tests that only read it)."""
    out = tmp_path_factory.mktemp("run") / "out"
    return out, run_seca(setup, out=out)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def without_run_costs(record: dict) -> dict:
    """A record minus what depends on the ledger's state (wall time, what was sent and paid)."""
    drop = {"seconds", "sent", "tokens", "cost"}
    out = {k: v for k, v in record.items() if k not in drop}
    out["queries"] = {role: {k: v for k, v in use.items() if k == "requests"}
                      for role, use in record["queries"].items()}
    return out


def test_run_writes_every_output(finished):
    out, summary = finished
    assert {p.name for p in out.iterdir()} >= {"config.json", "results.jsonl", "summary.json",
                                               "ledger.sqlite"}
    rows = records(out)
    assert [r["id"] for r in rows] == ["q1", "q2", "q3"]
    for r in rows:
        assert RECORD_KEYS <= set(r), RECORD_KEYS - set(r)
        assert r["objective"] == "option" and r["objective_estimate"] is False
    assert [r["eligible"] for r in rows] == [True, False, True]
    assert SUMMARY_KEYS <= set(summary)
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (summary["questions"], summary["eligible"]) == (3, 2)
    assert summary["asr"] == summary["attacked"] / 2
    assert summary["per_subject"]["space"] == {"questions": 1, "eligible": 0, "attacked": 0,
                                               "asr": None}
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 0 and config["options"]["iterations"] == 2


def test_records_account_for_every_role(finished):
    out, summary = finished
    q1, q2, _ = records(out)
    # An ineligible question costs one target request and nothing else.
    assert q2["target_requests"] == q2["requests"] == 1 and q2["target_choice"] is None
    assert q2["adversarial_question"] is None and q2["p_target_after"] is None
    # An eligible one: the proposer got N*M requests per step, the target one more (the original).
    steps = q1["steps"]
    assert q1["queries"]["proposer"]["requests"] == 9 * steps == q1["proposals"]
    assert q1["target_requests"] == 1 + q1["proposals"] - q1["unusable_proposals"]
    assert q1["requests"] == sum(u["requests"] for u in q1["queries"].values())
    assert q1["target_choice"] != q1["answer"]
    assert q1["p_target_before"] <= q1["p_correct_before"]
    if q1["changed"]:
        assert q1["p_target_after"] > q1["p_target_before"]
        assert q1["equivalence_passed"] and q1["coherence_passed"]
    with Ledger(out / "ledger.sqlite") as ledger:
        assert ledger.summary().answered == summary["sent"]


def test_the_tiny_judge_fails_to_parse_and_it_is_counted(setup, tmp_path):
    config = replace(setup, judge=setup.target, limit=1, iterations=2)
    summary = run_seca(config, out=tmp_path / "judged")
    (record,) = records(tmp_path / "judged")
    judged = record["checks"]["equivalence"]["checked"]
    assert judged > 0, "no candidate reached the judge; loosen the test's thresholds"
    # Random weights never write the judge's JSON: every judged candidate fails, counted once.
    assert record["judge_parse_failures"] == judged == summary["judge_parse_failures"]
    assert record["checks"]["equivalence"]["passed"] == 0 and record["changed"] is False
    assert summary["equivalence_pass_rate"] == 0.0


def test_roles_on_one_spec_share_one_loaded_model(setup, tmp_path, monkeypatch):
    loaded = []
    real = run_roles.load_target

    def counting(spec, **options):
        loaded.append(spec)
        return real(spec, **options)

    monkeypatch.setattr(run_roles, "load_target", counting)
    run_seca(replace(setup, limit=1, iterations=1), out=tmp_path / "out")
    assert sorted(loaded) == sorted([setup.target, setup.embedder])


def test_resume_skips_done_questions_and_resends_nothing(setup, finished, tmp_path,
                                                         monkeypatch):
    out, _ = finished
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (MANIFEST, "config.json", "results.jsonl", "ledger.sqlite"):
        (copy / name).write_bytes((out / name).read_bytes())
    before = records(copy)
    # Lose the last record, as if the run had been killed while attacking q3.
    lines = (copy / "results.jsonl").read_text().splitlines(keepends=True)
    (copy / "results.jsonl").write_text("".join(lines[:-1]))
    with Ledger(copy / "ledger.sqlite") as ledger:
        sent_before = ledger.summary()
    summary = run_seca(setup, out=copy, resume=True)
    with Ledger(copy / "ledger.sqlite") as ledger:
        sent_after = ledger.summary()
    assert sent_after.answered == sent_before.answered  # nothing new was sent
    assert sent_after.attempts == sent_before.attempts
    assert sent_after.cache_hits > sent_before.cache_hits
    after = records(copy)
    assert [without_run_costs(r) for r in after] == [without_run_costs(r) for r in before]
    assert after[-1]["sent"] == 0 and summary["questions"] == 3
    # With every question done, a resume loads no model at all.
    monkeypatch.setattr(run_roles, "load_target", lambda *a, **k: pytest.fail("loaded a model"))
    again = run_seca(setup, out=copy, resume=True)
    assert again["asr"] == summary["asr"] and len(records(copy)) == 3
    with pytest.raises(InputError, match="other settings"):
        run_seca(replace(setup, iterations=3), out=copy, resume=True)


def test_budget_stops_the_run_and_resumes_finish_it(setup, finished, tmp_path):
    full, _ = finished
    out = tmp_path / "budget"
    config = replace(setup, budget_queries=25)
    summary = run_seca(config, out=out)
    assert "query budget exhausted" in summary["stopped"]
    assert summary["sent"] <= 25
    for _ in range(20):  # each invocation may send 25 more requests
        summary = run_seca(config, out=out, resume=True)
        if summary["stopped"] is None:
            break
    assert summary["stopped"] is None and summary["questions"] == 3
    assert [without_run_costs(r) for r in records(out)] == \
        [without_run_costs(r) for r in records(full)]


@pytest.mark.parametrize("change, fragment", [
    ({"iterations": 0}, "iterations"),
    ({"similarity": 1.5}, "similarity"),
    ({"objective": "vibes"}, "objective"),
    ({"proposer_format": "poem"}, "proposer_format"),
    ({"max_cost": -1.0}, "max_cost"),
    ({"target": " "}, "target"),
])
def test_bad_config(setup, tmp_path, change, fragment):
    with pytest.raises(InputError, match=fragment):
        run_seca(replace(setup, **change), out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


class FlakyProposer(ScriptedProposer):
    """Rewrites by appending a word; the proposer's model 'fails' on the questions in ``fail``."""

    def __init__(self, fail=()):
        super().__init__(lambda step, i, j, parent: f"{parent} {'please' * (j + 1)}")
        self.fail = set(fail)

    def propose(self, question, parents, m, step):
        if question.id in self.fail:
            raise TargetError(f"the proposer's server refused {question.id}")
        return super().propose(question, parents, m, step)


def test_a_swapped_part_replaces_its_model_and_a_failing_question_is_recorded(
        setup, tmp_path, monkeypatch):
    loaded = []
    real = run_roles.load_target
    monkeypatch.setattr(run_roles, "load_target",
                        lambda spec, **options: loaded.append(spec) or real(spec, **options))
    config = replace(setup, proposer="hf:never-loaded", iterations=1)
    out = tmp_path / "out"
    summary = run_seca(config, out=out, proposer=FlakyProposer(fail={"q1"}))
    assert "hf:never-loaded" not in loaded
    rows = records(out)
    assert [r["id"] for r in rows] == ["q1", "q2", "q3"]
    assert rows[0]["error"] == "TargetError: the proposer's server refused q1"
    assert rows[2]["proposals"] > 0 and "error" not in rows[2]
    assert summary["errors"] == 1 and summary["questions"] == 3
    assert summary["eligible"] == 1  # q3 only: q1 has no result, q2 is ineligible
    # A resume does not retry the failed question unless asked.
    proposer = FlakyProposer()
    again = run_seca(config, out=out, resume=True, proposer=proposer)
    assert proposer.calls == [] and again["errors"] == 1
    retried = run_seca(config, out=out, resume=True, retry_errors=True, proposer=proposer)
    assert {c["parents"][0] for c in proposer.calls} == {RAW[0][1]}  # q1 only
    assert retried["errors"] == 0 and retried["eligible"] == 2
    assert len(records(out)) == 4  # the error record stays; the latest record counts


def test_run_seca_without_a_config_is_the_paper_sized_default(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(seca_run, "check_run_folder",
                        lambda out, resume: seen.append(out) or pytest.skip("no models here"))
    with pytest.raises(pytest.skip.Exception):
        run_seca(out=tmp_path / "out")
    assert seen == [tmp_path / "out"]
    assert SecaConfig.demo() == replace(SecaConfig(), limit=3, iterations=5)
