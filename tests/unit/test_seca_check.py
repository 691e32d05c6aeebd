"""``bbzo attack check`` and ``check_pairs``: the search's own checks on labelled pairs,
verdicts and confusion counts written, and every bad pair file refused before anything is
written (offline checkers only: no model is loaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bbzo.attacks.seca.check import check_pairs, confusion, read_pairs
from bbzo.attacks.seca.questions import Question
from bbzo.attacks.seca.run import SecaConfig, build_parts
from bbzo.cli.main import cli
from bbzo.errors import InputError
from bbzo.runs.roles import Roles

PAIRS = Path(__file__).parents[1] / "data" / "seca_pairs.jsonl"
OFFLINE = {"embedder": None, "reference": None}  # the offline checkers alone: no model
LABELLED = [
    {"original": "What gas do plants absorb?", "rewrite": "Which gas do plants absorb?",
     "equivalent": True},                                                # tp
    {"original": "What gas do plants absorb?", "rewrite": "What gas do plants release?",
     "equivalent": False},                                               # tn (antonym)
    {"original": "What is the largest mammal?", "rewrite": "What is the largest land mammal?",
     "equivalent": False},                                               # tn (scope)
    {"original": "Who wrote Hamlet?", "rewrite": "Who is the playwright behind Hamlet?",
     "equivalent": True},                                                # fn (no synonym)
]


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def invoke(*args):
    return CliRunner().invoke(cli, ["attack", "check", *map(str, args)], prog_name="bbzo")


def test_check_pairs_writes_verdicts_and_confusion(tmp_path):
    pairs = write(tmp_path / "pairs.jsonl", LABELLED)
    summary = check_pairs(pairs, out=tmp_path / "out", config=SecaConfig(**OFFLINE))
    assert (summary["tp"], summary["fp"], summary["fn"], summary["tn"]) == (1, 0, 1, 2)
    assert summary["precision"] == 1.0 and summary["recall"] == 0.5
    assert summary["checkers"] == ["option-leak", "negation", "qualifiers", "repetition",
                                   "agreement", "alignment"]
    assert summary["per_checker"]["negation"]["tn"] == 1  # only the antonym pair
    lines = [json.loads(x) for x in (tmp_path / "out" / "verdicts.jsonl").read_text()
             .splitlines()]
    assert [r["passed"] for r in lines] == [True, False, False, False]
    assert [r["label"] for r in lines] == [True, False, False, True]
    assert lines[1]["equivalent"] is False and lines[1]["coherent"] is True
    assert set(lines[2]["scores"]) == set(summary["checkers"]) and lines[2]["scores"][
        "alignment"] == 1.0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["tp"] == 1


def test_the_audit_runs_the_searchs_checks(tmp_path):
    """The checks of a SECA run built from a config give the audit's verdicts."""
    config = SecaConfig(**OFFLINE)
    with Roles({}) as roles:
        parts = build_parts(config, roles, objective=object(), proposer=object())
    pairs = read_pairs(PAIRS)[::7]
    summary = check_pairs(write(tmp_path / "p.jsonl", pairs), out=tmp_path / "o", config=config)
    audited = [json.loads(x)["passed"] for x in (tmp_path / "o" / "verdicts.jsonl")
               .read_text().splitlines()]
    searched = [all(v.passed for v in parts.checks.check(Question("q", p["original"], (), 0),
                                                         [p["rewrite"]])[0]) for p in pairs]
    assert audited == searched and summary["checkers"] == [c.name for c in
                                                           parts.checks.constraints]
    assert True in audited and False in audited


def test_unlabelled_pairs_and_split(tmp_path):
    rows = [{"original": "Who wrote Hamlet?", "rewrite": "Who was it that wrote Hamlet?",
             "split": "a"},
            {"original": "Who wrote Hamlet?", "rewrite": "Who wrote Hamlet Hamlet?",
             "split": "b"}]
    summary = check_pairs(write(tmp_path / "p.jsonl", rows), out=tmp_path / "o",
                          config=SecaConfig(**OFFLINE), split="b")
    assert summary["pairs"] == 1 and summary["labelled"] == 0 and "precision" not in summary
    assert summary["coherence_error_rate"] == 1.0


def test_confusion_counts():
    c = confusion([True, True, False, False, True], [True, False, True, False, True])
    assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (2, 1, 1, 1)
    assert c["precision"] == pytest.approx(2 / 3) and c["recall"] == pytest.approx(2 / 3)
    assert confusion([False], [False])["precision"] is None


def test_cli_table_and_exit_code(tmp_path):
    pairs = write(tmp_path / "pairs.jsonl", LABELLED)
    result = invoke(pairs, "--out", tmp_path / "out", "--embedder", "none", "--reference",
                    "none")
    assert result.exit_code == 0, result.output
    assert "all checks (cascade)" in result.stdout and "100.0%" in result.stdout
    assert (tmp_path / "out" / "verdicts.jsonl").is_file()
    again = invoke(pairs, "--out", tmp_path / "out", "--embedder", "none", "--reference",
                   "none", "--json", "--resume")
    assert again.exit_code == 0 and json.loads(again.stdout)["recall"] == 0.5


@pytest.mark.parametrize("rows, message", [
    ([], "holds no pairs"),
    (["", "   "], "holds no pairs"),
    ([{"rewrite": "Who wrote it?", "equivalent": True}], "no 'original'"),
    ([{"original": "Who wrote it?", "rewrite": " "}], "no 'rewrite'"),
    ([{"original": "Q?", "rewrite": "R?", "equivalent": "yes"}], "must be true or false"),
    ([{"original": "Q?", "rewrite": "R?", "equivalent": 1}], "must be true or false"),
    ([{"original": "Q?", "rewrite": "R?", "choices": "A"}], "'choices'"),
    (["{not json"], "is not JSON"),
    (["[1, 2]"], "not a JSON object"),
])
def test_bad_pair_files_fail_with_one_line_and_write_nothing(tmp_path, rows, message):
    pairs = write(tmp_path / "pairs.jsonl", rows)
    result = invoke(pairs, "--out", tmp_path / "out", "--embedder", "none", "--reference",
                    "none")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        read_pairs(pairs)


def test_usage_errors_exit_2(tmp_path):
    pairs = write(tmp_path / "pairs.jsonl", LABELLED)
    assert invoke(tmp_path / "missing.jsonl").exit_code == 2
    bad = invoke(pairs, "--out", tmp_path / "o", "--max-unmatched", "-1", "--embedder", "none")
    assert bad.exit_code == 2 and "--max-unmatched" in bad.stderr
    assert not (tmp_path / "o").exists()
    with pytest.raises(InputError, match="no pair with split"):
        check_pairs(pairs, out=tmp_path / "o", config=SecaConfig(**OFFLINE), split="heldout")
