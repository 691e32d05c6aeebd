"""``bbzo attack seca`` on tiny models: --json output and the run folder, the table, demo-size
defaults, exit codes and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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
            "--coherence-ratio", "1e6", "--proposer-mode", "llm", "--no-lexical"]


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
    (["--base-url", "http://localhost:8000/v1"], "'--base-url'"),  # the target is hf:
    (["--target", " "], "'--target'"),
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


# --- nothing written before every input checks out -------------------------------------------

def snapshot(path):
    """Every file under ``path`` with its bytes (names relative to ``path``)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("bad", ["target=hf:nope", "target=foo:bar", "target=openai:",
                                 "target=openai:gpt-4.1-mini", "proposer=hf:nope",
                                 "match=not-a-run"])
def test_a_bad_model_or_match_writes_nothing_and_the_fixed_rerun_works(
        models, questions, tmp_path, monkeypatch, bad):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (tmp_path / "not-a-run").mkdir()
    monkeypatch.chdir(tmp_path)
    name, value = bad.split("=", 1)
    extra = [f"--{name}", value] + (["--baseline", "random"] if name == "match" else [])
    out = tmp_path / "run"
    args = [*models, "--questions", questions, "--iterations", 1, "--limit", 1, "--out", out]
    result = invoke(*args, *extra)
    assert result.exit_code == 1
    one_error_line(result)
    assert not out.exists()
    fixed = invoke(*args, "--json")
    assert fixed.exit_code == 0, fixed.stderr


def test_a_question_too_long_for_the_target_is_refused_before_writing(models, tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"id": "long", "question": "why? " * 800,
                                "choices": ["a", "b"], "answer": 0}) + "\n")
    result = invoke(*models, "--questions", path, "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert "question long (with its options) is" in one_error_line(result)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("option, value", [("--similarity", "nan"), ("--max-cost", "inf"),
                                           ("--coherence-ratio", "-inf"), ("--limit", "0"),
                                           ("--samples", "-3")])
def test_non_finite_or_out_of_range_values_are_usage_errors_on_their_option(option, value):
    result = invoke(option, value)
    assert result.exit_code == 2
    line = one_error_line(result)
    assert f"'{option}'" in line and option.lstrip("-").replace("-", "_") + " " not in line


def test_the_users_folder_is_never_touched(models, tmp_path):
    # The reported bug: --out is the folder of the user's question file, which has no final
    # newline; --resume used to "repair" it from 135 to 68 bytes.
    folder = tmp_path / "dl"
    folder.mkdir()
    lines = [json.dumps({"id": f"q{i}", "question": f"{i}+{i}?", "choices": [str(2 * i), "x"],
                         "answer": 0}) for i in (1, 2)]
    (folder / "questions.jsonl").write_text("\n".join(lines))
    before = snapshot(folder)
    for resume in ([], ["--resume"]):
        result = invoke(*models, "--questions", folder / "questions.jsonl", "--out", folder,
                        "--iterations", 1, *resume)
        assert result.exit_code == 2
        assert "not a bbzo run" in one_error_line(result)
        assert snapshot(folder) == before


def test_the_same_questions_by_relative_and_absolute_path_resume(models, questions, tmp_path,
                                                                 monkeypatch):
    monkeypatch.chdir(questions.parent)
    args = [*models, "--iterations", 1, "--limit", 1, "--out", tmp_path / "run", "--json"]
    first = invoke(*args, "--questions", questions.name, "--budget-queries", 1)
    assert first.exit_code == 0, first.stderr
    again = invoke(*args, "--questions", questions.resolve(), "--budget-queries", 1,
                   "--resume")
    assert again.exit_code == 0, again.stderr


# --- property: bad option values are one-line usage errors that change no file ---------------

INT_OPTIONS = ["--iterations", "--candidates", "--parents", "--limit", "--budget-queries",
               "--samples", "--rpm", "--tpm", "--seed"]
FLOAT_OPTIONS = ["--similarity", "--max-cost", "--coherence-ratio"]


def _not_a_positive_int(text: str) -> bool:
    try:
        return int(text) < 1
    except ValueError:
        return True


def _bad_int(option: str, text: str) -> bool:
    """Whether ``text`` is invalid for ``option`` (``--seed`` takes 0 too; the rest need >= 1)."""
    try:
        value = int(text)
    except ValueError:
        return True
    return value < (0 if option == "--seed" else 1)


def _bad_float(option: str, text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return True
    ok = 0 < value < float("inf") and (option != "--similarity" or value <= 1)
    return not ok


odd_strings = st.text(max_size=12)
int_cases = st.tuples(st.sampled_from(INT_OPTIONS), st.one_of(
    st.integers(max_value=0, min_value=-10**30).map(str),
    st.sampled_from(["nan", "inf", "1.5", "1e3", "", "0x10", "3 apples"]),
    odd_strings.filter(_not_a_positive_int))).filter(lambda c: _bad_int(*c))
float_cases = st.tuples(st.sampled_from(FLOAT_OPTIONS), st.one_of(
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e999", "-1e999", "0", "-0.0", "2", "1e308",
                     "", "abc"]),
    st.floats(max_value=0).map(repr), odd_strings))


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    """A folder holding a user's file (no final newline), used as --out and --questions."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "questions.jsonl").write_text(json.dumps({"question": "1+1?",
                                                        "choices": ["2", "3"], "answer": 0}))
    return folder


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.one_of(int_cases, float_cases.filter(lambda c: _bad_float(*c))),
       resume=st.booleans())
def test_any_bad_option_value_is_a_one_line_usage_error_that_writes_nothing(user_folder, case,
                                                                           resume):
    option, value = case
    before = snapshot(user_folder)
    result = invoke("--questions", user_folder / "questions.jsonl", "--out",
                    user_folder / "run", option, value, *(["--resume"] if resume else []))
    assert result.exit_code == 2, (option, value, result.output)
    one_error_line(result)
    assert snapshot(user_folder) == before
