"""One reader of run folders (``bbzo.runs.reader``), used by ``bbzo attack eval`` and
``--match``: it writes nothing, refuses a folder that is not a bbzo run with one line, leaves
out a torn last line (a run still writing), and names file, line and field of malformed
content (before: ``config.json`` holding ``[1,2]`` gave an unexpected AttributeError and a
record lacking a field an unexpected KeyError)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from bbzo.attacks.seca.baseline import matched_budgets
from bbzo.attacks.seca.evaluate import check_record, evaluate_run
from bbzo.attacks.seca.questions import Question
from bbzo.attacks.seca.run import SecaConfig
from bbzo.cli.main import cli
from bbzo.errors import InputError
from bbzo.runs.reader import check_fields, read_records, read_run

CHOICES = ["Paris", "Berlin", "Rome", "Madrid"]
QUESTION = Question("q1", "What is the capital of France?", tuple(CHOICES), 0, "geography")


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir())}


def seca_record(**change) -> dict:
    record = {"id": "q1", "method": "seca", "subject": "geography",
              "original_question": QUESTION.question, "adversarial_question": "Which city?",
              "choices": CHOICES, "answer": 0, "answer_letter": "A", "eligible": True,
              "target_letter": "B", "changed": True, "success": True, "proposals": 9,
              "unusable_proposals": 1, "unscored": 2}
    return {**record, **change}


def write_run(folder: Path, records: list, *, config: object = None, tail: str = "") -> Path:
    """A run folder as ``run_seca`` leaves it; ``tail`` is appended after the last line."""
    folder.mkdir()
    if config is None:
        options = {k: v for k, v in asdict(SecaConfig(target="t")).items() if k != "seed"}
        config = {"options": options, "seed": 0}
    (folder / "config.json").write_text(json.dumps(config))
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)
    (folder / "results.jsonl").write_text(lines + tail)
    return folder


def eval_cli(folder: Path):
    return CliRunner().invoke(cli, ["attack", "eval", str(folder), "--judge", "j"],
                              prog_name="bbzo")


def one_error_line(result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.output
    assert "unexpected" not in lines[0]
    return lines[0]


@pytest.mark.parametrize("config, records, fragments", [
    ([1, 2], [seca_record()], ["config.json must hold a JSON object, got list"]),
    ({"seed": 0}, [seca_record()], ["config.json: field 'options' must be a JSON object"]),
    ("{not json", [seca_record()], ["config.json: not valid JSON"]),
    (None, [seca_record(), {k: v for k, v in seca_record().items() if k != "eligible"}],
     ["results.jsonl line 2: field 'eligible' is missing"]),
    (None, [seca_record(answer="0")], ["results.jsonl line 1: field 'answer' must be int"]),
    (None, [seca_record(eligible=1)], ["line 1: field 'eligible' must be bool, got 1"]),
    (None, [seca_record(answer=7)], ["line 1: field 'answer' must be an index 0..3"]),
    (None, [seca_record(target_letter="Z")], ["line 1: field 'target_letter'"]),
    (None, [seca_record(target_letter="AB")], ["line 1: field 'target_letter'"]),
    (None, [seca_record(target_letter=None)], ["line 1: field 'target_letter'"]),
    (None, [seca_record(choices=["x", 1])], ["line 1: field 'choices' must hold 2 to 26"]),
    (None, ["{oops", seca_record()], ["results.jsonl line 1: not valid JSON"]),
    (None, ["[" * 100_000 + "]" * 100_000], ["results.jsonl line 1: JSON nested too deeply"]),
    (None, ["[1, 2]"], ["results.jsonl line 1: expected one JSON object, got list"]),
])
def test_attack_eval_names_file_line_and_field_and_changes_nothing(tmp_path, config, records,
                                                                    fragments):
    folder = tmp_path / "run"
    write_run(folder, records)
    if isinstance(config, str):
        (folder / "config.json").write_text(config)
    elif config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    before = snapshot(folder)
    result = eval_cli(folder)
    assert result.exit_code == 1
    line = one_error_line(result)
    assert all(f in line for f in fragments), line
    assert snapshot(folder) == before
    with pytest.raises(InputError):
        evaluate_run(folder, judge="j", k=1)
    assert snapshot(folder) == before


@pytest.mark.parametrize("files", [{}, {"notes.txt": "hi"}, {"config.json": "{}"},
                                   {"results.jsonl": "{}\n"}])
def test_a_folder_that_is_not_a_run_is_refused_with_one_line(tmp_path, files):
    folder = tmp_path / "other"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    before = snapshot(folder)
    assert "is not a bbzo run folder" in one_error_line(eval_cli(folder))
    with pytest.raises(InputError, match="is not a bbzo run folder.*cannot read the SECA run"):
        matched_budgets(folder, [QUESTION], "t", "auto")
    assert snapshot(folder) == before


def test_a_torn_last_line_is_left_out_and_not_cut(tmp_path):
    folder = write_run(tmp_path / "run", [seca_record()], tail='{"id": "q2", "subj')
    before = snapshot(folder)
    view = read_run(folder)
    assert view.torn and [r["id"] for r in view.records] == ["q1"]
    assert view.summary is None and view.options["target"] == "t"
    assert matched_budgets(folder, [QUESTION], "t", "auto") == {"q1": 6}
    assert snapshot(folder) == before  # the writer's half line is still there


def test_a_bad_line_before_the_end_is_an_error_not_skipped(tmp_path):
    folder = write_run(tmp_path / "run", ['{"id": "q2", "subj', seca_record()])
    with pytest.raises(InputError, match=r"results.jsonl line 1: not valid JSON"):
        matched_budgets(folder, [QUESTION], "t", "auto")
    without = write_run(tmp_path / "short", [seca_record(proposals=None)])
    with pytest.raises(InputError, match="line 1: field 'proposals' must be int, got None"):
        matched_budgets(without, [QUESTION], "t", "auto")


def test_records_accept_a_bom_and_invisible_characters_are_escaped(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "\u200bq"}).encode() + b"\n")
    records, torn = read_records(path)
    assert records == [{"id": "\u200bq"}] and not torn
    with pytest.raises(InputError) as err:
        read_records(path, lambda record, where: check_fields(record, {"id": (int,)}, where))
    assert "\\u200b" in str(err.value) and "\u200b" not in str(err.value)


WRONG = [None, True, 0, -1, 10 ** 30, 1.5, float("nan"), "", "AB", "\u200b", [], ["x"],
         {"a": 1}]


@pytest.mark.parametrize("field", [f for f in seca_record() if f != "method"])
def test_every_wrong_value_of_every_field_is_read_or_refused_in_one_line(tmp_path, field):
    for i, value in enumerate(WRONG):
        folder = write_run(tmp_path / f"run{i}", [seca_record(**{field: value})])
        before = snapshot(folder)
        for read, args in ((read_run, {"check": check_record}),
                           (matched_budgets, {"questions": [QUESTION], "target": "t",
                                              "objective": "auto"})):
            try:
                read(folder, **args)
            except InputError as err:
                assert "\n" not in str(err) and str(err).isprintable()
        assert snapshot(folder) == before
