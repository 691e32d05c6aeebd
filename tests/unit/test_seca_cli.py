"""``bbzo attack seca`` on tiny models: --json output and the run folder, the table, demo-size
defaults, exit codes and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from seca_support import save_roomy_lm, save_tiny_embedder

from bbzo.attacks.seca.run import DEMO_ITERATIONS, DEMO_LIMIT, SecaConfig
from bbzo.cli.main import cli


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    lm = save_roomy_lm(root / "lm")
    embedder = save_tiny_embedder(root / "emb")
    return ["--target", f"hf:{lm}", "--proposer", f"hf:{lm}", "--reference", f"hf:{lm}",
            "--embedder", f"embed:{embedder}", "--device", "cpu", "--similarity", "0.05",
            "--coherence-ratio", "1e6"]


@pytest.fixture()
def questions(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i} plus {i}?",
                                        "choices": [str(2 * i), str(2 * i + 1), "seven", "zero"],
                                        "answer": 0, "subject": "mathematics"}) + "\n"
                            for i in range(1, 4)))
    return path


def invoke(*args):
    return CliRunner().invoke(cli, ["attack", "seca", *map(str, args)], prog_name="bbzo")


def one_error_line(result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    return lines[0]


def test_json_run_then_table_on_resume(models, questions, tmp_path):
    out = tmp_path / "run"
    args = [*models, "--questions", questions, "--iterations", 1, "--limit", 2, "--out", out]
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)  # stdout holds the JSON and nothing else
    assert summary["questions"] == 2 and summary["objective"] == "option"
    assert {p.name for p in out.iterdir()} >= {"config.json", "results.jsonl", "summary.json",
                                               "ledger.sqlite"}
    options = json.loads((out / "config.json").read_text())["options"]
    assert options["judge"] is None and options["iterations"] == 1 and options["limit"] == 2
    again = invoke(*args)
    assert again.exit_code == 2 and "--resume" in one_error_line(again)
    table = invoke(*args, "--resume")
    assert table.exit_code == 0, table.stderr
    assert "SECA on hf:" in table.stdout and "q1" in table.stdout and "q2" in table.stdout


def test_defaults_come_from_secaconfig_and_the_demo_is_a_preset(models, tmp_path):
    ineligible = tmp_path / "q.jsonl"  # answer 'zero' of four: the budget stops the run early
    ineligible.write_text(json.dumps({"question": "1+1?", "choices": ["2", "3", "4", "0"],
                                      "answer": 3}) + "\n")
    result = invoke(*models, "--questions", ineligible, "--out", tmp_path / "file",
                    "--budget-queries", 1, "--json")
    assert result.exit_code == 0, result.stderr
    options = json.loads((tmp_path / "file" / "config.json").read_text())["options"]
    paper = SecaConfig()
    assert (options["iterations"], options["limit"]) == (paper.iterations, paper.limit)
    for name in ("candidates", "parents", "samples", "objective", "proposer_format"):
        assert options[name] == getattr(paper, name), name
    result = invoke(*models, "--out", tmp_path / "builtin", "--budget-queries", 1, "--json")
    assert result.exit_code == 0, result.stderr
    options = json.loads((tmp_path / "builtin" / "config.json").read_text())["options"]
    assert (options["iterations"], options["limit"]) == (paper.iterations, paper.limit)
    result = invoke(*models, "--preset", "demo", "--out", tmp_path / "demo",
                    "--budget-queries", 1, "--json")
    assert result.exit_code == 0, result.stderr
    options = json.loads((tmp_path / "demo" / "config.json").read_text())["options"]
    assert (options["iterations"], options["limit"]) == (DEMO_ITERATIONS, DEMO_LIMIT)
    assert options["questions"] is None
    assert "query budget exhausted" in json.loads(result.stdout)["stopped"]
    assert "--resume" in result.stderr  # the note on how to continue


def test_roles_can_be_turned_off(models, questions, tmp_path):
    args = [*models, "--embedder", "none", "--reference", "None", "--questions", questions,
            "--iterations", 1, "--limit", 1, "--out", tmp_path / "run", "--json"]
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr
    options = json.loads((tmp_path / "run" / "config.json").read_text())["options"]
    assert options["embedder"] is None and options["reference"] is None


@pytest.mark.parametrize("extra, fragment", [
    (["--objective", "vibes"], "'--objective'"),
    (["--iterations", "0"], "'--iterations'"),
    (["--similarity", "1.5"], "'--similarity'"),
    (["--questions", "/nonexistent/q.jsonl"], "'--questions'"),
    (["--parents", "-2"], "'--parents'"),
    (["--nope"], "No such option"),
])
def test_usage_errors_exit_2(extra, fragment):
    result = invoke(*extra)
    assert result.exit_code == 2
    assert fragment in one_error_line(result)


def test_malformed_question_file_exits_1_naming_line_and_field(models, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "a?", "choices": ["x", "y"], "answer": 0}\n'
                    '{"question": "b?", "choices": ["x", "y"], "answer": "Z"}\n')
    result = invoke(*models, "--questions", path, "--out", tmp_path / "run")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "bad.jsonl line 2: field 'answer'" in line


def test_unknown_model_exits_1(questions, tmp_path):
    result = invoke("--target", f"hf:{tmp_path / 'missing'}", "--questions", questions,
                    "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert "missing" in one_error_line(result)
