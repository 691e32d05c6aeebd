"""ASR@K (``evaluate_run`` / ``bbzo attack eval``): a trial succeeds only when the sampled letter
is the target letter and the evaluation judge says hallucination; K trials are K distinct
``sample`` indices and a rerun sends nothing new; unparsed letters and judge replies are
counted; the command's exit codes and one-line errors."""

from __future__ import annotations

import json
import re
from dataclasses import asdict

import pytest
from click.testing import CliRunner
from seca_support import ScriptedTarget, save_roomy_lm

import bbzo.runs.roles as run_roles
from bbzo.attacks.seca.evaluate import (
    evaluate_records,
    evaluate_run,
    parse_hallucination,
    parse_letter,
    summarize_eval,
)
from bbzo.attacks.seca.run import SecaConfig
from bbzo.blackbox.protocol import Request
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.ledger import Ledger
from bbzo.cli.main import cli
from bbzo.errors import InputError
from bbzo.runs import RunFolder

CHOICES = ["Paris", "Berlin", "Rome", "Madrid"]
# What the scripted target answers, by question text and sample index. Markers tell the
# scripted judge what to reply: [h] hallucination, [ok] no hallucination, [?] garbage.
ANSWERS = {
    "Which city is the capital of France?": [
        "B. Berlin, because it is the largest city. [h]",   # hit + hallucination: success
        "A. Paris is the capital. [h]",                      # miss: never judged
        "B. [ok]",                                           # hit, judged fine: fails
    ],
    "What is the French capital?": [
        "(C) Rome [?]",                                      # hit, judge unreadable: fails
        "I cannot tell.",                                    # no letter: counted, fails
        "A country far away: option D. [h]",                 # article skipped -> D: miss
    ],
}
VERDICTS = {"[h]": '{"hallucination": 1, "type": "factuality"}',
            "[ok]": 'Sure. {"hallucination": 0, "type": "none"}',
            "[?]": "I would rather not say."}


def record(qid: str, text: str, target: str | None) -> dict:
    """A results.jsonl record as ``run_seca`` writes it (the fields evaluation reads)."""
    return {"id": qid, "method": "seca", "subject": "geography", "original_question": text,
            "adversarial_question": text if target else None, "choices": CHOICES, "answer": 0,
            "answer_letter": "A", "eligible": target is not None, "target_letter": target,
            "changed": False, "success": False}


RECORDS = [record("q1", "Which city is the capital of France?", "B"),
           record("q2", "What is the French capital?", "C"),
           record("q3", "Name the capital of France.", None)]


def answer(request: Request) -> dict:
    prompt = request.payload["prompt"]
    text = next(t for t in ANSWERS if f"\n{t}\n" in prompt)
    return {"text": ANSWERS[text][request.sample % 3]}


def verdict(request: Request) -> dict:
    given = re.search(r"Answer given: (.*)\n", request.payload["messages"][0]["content"])
    return {"text": next(v for mark, v in VERDICTS.items() if mark in given.group(1))}


@pytest.fixture()
def scripted():
    return (ScriptedTarget(answer, ["generate"], "scripted-target"),
            ScriptedTarget(verdict, ["chat"], "scripted-judge"))


@pytest.mark.parametrize("text, letter", [
    ("B", "B"), (" B. Berlin", "B"), ("(C) Rome", "C"), ("option D because", "D"),
    ("**B** is right", "B"), ("A", "A"), ("A. Paris", "A"), ("A country: B", "B"),
    ("I think C", "C"), ("E is not an option, B is", "B"), ("Berlin", None), ("", None),
    ("ABBA", None)])
def test_parse_letter(text, letter):
    assert parse_letter(text, ("A", "B", "C", "D")) == letter


@pytest.mark.parametrize("text, parsed", [
    ('{"hallucination": 1, "type": "factuality"}', (True, "factuality")),
    ('Here: {"hallucination": "no", "type": "none"} done', (False, "none")),
    ('{"hallucination": true, "type": "made up"}', (True, None)),
    ('"hallucination": 0', (False, None)),
    ('{"hallucination": "maybe"}', None), ("no idea", None), ("", None)])
def test_parse_hallucination(text, parsed):
    assert parse_hallucination(text) == parsed


def test_success_needs_the_target_letter_and_a_hallucination_verdict(scripted):
    target, judge = scripted
    evals = evaluate_records(RECORDS, target=QueryLayer(target), judge=QueryLayer(judge), k=3,
                             max_tokens=16)
    q1, q2 = evals  # the ineligible q3 is not evaluated
    assert [t["success"] for t in q1["trials"]] == [True, False, False]
    assert q1["letters"] == ["B", "A", "B"] and q1["attacked"] is True
    assert q1["trials"][0]["type"] == "factuality" and q1["hallucinations"] == 1
    assert [t["success"] for t in q2["trials"]] == [False, False, False]
    assert q2["letters"] == ["C", None, "D"] and q2["attacked"] is False
    assert (q2["unparsed_letters"], q2["judge_parse_failures"]) == (1, 1)
    # The judge saw exactly the three letter hits, each with its own answer.
    judged = [m.group(1) for r in judge.seen
              for m in [re.search(r"Answer given: option (.*)\n",
                                  r.payload["messages"][0]["content"])]]
    assert sorted(judged) == sorted([ANSWERS[RECORDS[0]["original_question"]][0],
                                     ANSWERS[RECORDS[0]["original_question"]][2],
                                     ANSWERS[RECORDS[1]["original_question"]][0]])
    assert all(r.params["temperature"] == 0 for r in judge.seen)


def test_no_eligible_question_sends_nothing(scripted):
    target, judge = scripted
    assert evaluate_records(RECORDS[2:], target=QueryLayer(target), judge=QueryLayer(judge),
                            k=3) == []
    assert target.seen == [] and judge.seen == []
    summary = summarize_eval([], 3)
    assert (summary["eligible"], summary["asr_at_k"], summary["letter_hit_rate"]) == (0, None,
                                                                                     None)


def make_run(tmp_path, records=RECORDS, target="scripted-target"):
    run = RunFolder(tmp_path / "run")
    options = {k: v for k, v in asdict(SecaConfig(target=target)).items() if k != "seed"}
    run.write_config(options, 0)
    for r in records:
        run.append_jsonl("results.jsonl", r)
    return run.path


def test_trials_are_distinct_samples_and_a_rerun_sends_nothing(scripted, tmp_path, monkeypatch):
    target, judge = scripted
    models = {"scripted-target": target, "scripted-judge": judge}
    monkeypatch.setattr(run_roles, "load_target", lambda spec, **options: models[spec])
    path = make_run(tmp_path)
    first = evaluate_run(path, judge="scripted-judge", k=3, max_tokens=16)
    assert (first["eligible"], first["attacked"], first["asr_at_k"]) == (2, 1, 0.5)
    assert (first["letter_hits"], first["trials"], first["letter_hit_rate"]) == (3, 6, 0.5)
    assert (first["unparsed_letters"], first["judge_parse_failures"]) == (1, 1)
    assert first["sent"] == 6 + 3 and first["judge_is_search_judge"] is False
    for text in ANSWERS:
        asked = [r for r in target.seen if f"\n{text}\n" in r.payload["prompt"]]
        assert sorted(r.sample for r in asked) == [0, 1, 2]
        assert all(r.params["temperature"] == 1.0 and r.params["max_tokens"] == 16
                   for r in asked)
    lines = (path / "eval.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["q1", "q2"]
    assert json.loads((path / "eval_summary.json").read_text()) == first
    with Ledger(path / "ledger.sqlite") as ledger:
        answered = ledger.summary().answered
    seen = (len(target.seen), len(judge.seen))

    again = evaluate_run(path, judge="scripted-judge", k=3, max_tokens=16)
    assert (len(target.seen), len(judge.seen)) == seen and again["sent"] == 0
    assert (path / "eval.jsonl").read_text().splitlines() == lines
    assert {k: v for k, v in again.items() if k not in ("sent", "seconds", "queries")} == \
        {k: v for k, v in first.items() if k not in ("sent", "seconds", "queries")}
    # A larger K keeps the first three draws and sends only the new ones.
    bigger = evaluate_run(path, judge="scripted-judge", k=4, max_tokens=16)
    assert len(target.seen) == seen[0] + 2
    assert {r.sample for r in target.seen[seen[0]:]} == {3}
    with Ledger(path / "ledger.sqlite") as ledger:
        assert ledger.summary().answered == answered + bigger["sent"]


def test_a_tiny_real_judge_is_counted_as_unparsed(tmp_path):
    lm = save_roomy_lm(tmp_path / "lm")
    spec = f"hf:{lm}"
    path = make_run(tmp_path, target=spec)
    summary = evaluate_run(path, judge=spec, k=4, max_tokens=24, judge_max_tokens=16,
                           device="cpu")
    assert summary["trials"] == 8 and summary["judge_is_search_judge"] is False
    # Random weights never write the verdict's JSON: every letter hit is an unparsed reply.
    assert summary["letter_hits"] > 0, "no trial hit the target letter; raise k"
    assert summary["judge_parse_failures"] == summary["letter_hits"]
    assert summary["attacked"] == 0 and summary["asr_at_k"] == 0.0


def test_bad_arguments(tmp_path, scripted):
    path = make_run(tmp_path)
    with pytest.raises(InputError, match="k must be a positive integer"):
        evaluate_run(path, judge="scripted-judge", k=0)
    with pytest.raises(InputError, match="judge must be a target spec"):
        evaluate_run(path, judge=" ", k=1)
    with pytest.raises(InputError, match="holds no SECA run"):
        evaluate_run(tmp_path / "nowhere", judge="scripted-judge", k=1)
    target, judge = scripted
    with pytest.raises(InputError, match="k must be a positive integer"):
        evaluate_records(RECORDS, target=QueryLayer(target), judge=QueryLayer(judge), k=-1)


def invoke(*args):
    return CliRunner().invoke(cli, ["attack", "eval", *map(str, args)], prog_name="bbzo")


def one_error_line(result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    return lines[0]


def test_cli_table_and_json(scripted, tmp_path, monkeypatch):
    target, judge = scripted
    models = {"scripted-target": target, "scripted-judge": judge}
    monkeypatch.setattr(run_roles, "load_target", lambda spec, **options: models[spec])
    path = make_run(tmp_path)
    result = invoke(path, "--judge", "scripted-judge", "--k", 3, "--max-tokens", 16, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["asr_at_k"] == 0.5
    table = invoke(path, "--judge", "scripted-judge", "--k", 3, "--max-tokens", 16)
    assert table.exit_code == 0, table.stderr
    assert "ASR@3 50.0%" in table.stdout and "B A B" in table.stdout and "C ? D" in table.stdout


@pytest.mark.parametrize("args, code, fragment", [
    (["{missing}", "--judge", "x"], 2, "'RUN'"),
    (["{empty}", "--judge", "x"], 1, "holds no SECA run"),
    (["{empty}", "--judge", "x", "--k", "0"], 2, "'--k'"),
    (["{empty}", "--judge", "x", "--k", "two"], 2, "'--k'"),
    (["{empty}"], 2, "'--judge'"),
])
def test_cli_errors(tmp_path, args, code, fragment):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    result = invoke(*[a.format(**paths) for a in args])
    assert result.exit_code == code
    assert fragment in one_error_line(result)
