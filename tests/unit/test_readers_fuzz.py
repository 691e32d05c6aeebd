"""Property: whatever bytes a question file, a run folder or a ledger holds, the readers either
read it or raise one readable ``InputError`` line (the CLI: exit 1, one line, no traceback),
and never change a file."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from seca_support import QUESTION

from bbzo.attacks.seca.baseline import matched_budgets
from bbzo.attacks.seca.evaluate import check_record
from bbzo.attacks.seca.questions import Question, load_questions
from bbzo.attacks.seca.run import SecaConfig
from bbzo.cli.main import cli
from bbzo.errors import InputError
from bbzo.runs.reader import read_run

BOM = b"\xef\xbb\xbf"
SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

values = st.one_of(
    st.none(), st.booleans(), st.integers(-(10 ** 30), 10 ** 30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["A", "b", "1", "\ufeffA", "\u200b", "²", ""]),
    st.lists(st.text(max_size=6), max_size=5), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
deep = st.integers(900, 30_000).map(lambda n: "[" * n + "]" * n)
huge = st.integers(4_400, 6_000).map(lambda n: "9" * n)


def records(fields: list[str]) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({}, optional={name: values for name in fields})


def lines(fields: list[str], good: dict) -> st.SearchStrategy[bytes]:
    """One JSONL line: a good record with fields changed or dropped, a random record, random
    bytes, deep nesting, a huge number, NaN, each maybe after a BOM."""
    one_wrong = st.tuples(st.sampled_from(fields), values).map(
        lambda t: {**good, t[0]: t[1]})
    changed = st.tuples(records(fields), st.lists(st.sampled_from(fields), max_size=2)).map(
        lambda t: {k: v for k, v in {**good, **t[0]}.items() if k not in t[1]})
    text = st.one_of(
        one_wrong.map(json.dumps), changed.map(json.dumps), records(fields).map(json.dumps), deep,
        deep.map(lambda d: json.dumps(good)[:-1] + f', "x": {d}}}'),
        huge.map(lambda h: json.dumps(good)[:-1] + f', "answer": {h}}}'),
        st.just(json.dumps({**good, "answer": float("nan")})))
    encoded = st.one_of(text.map(str.encode), st.binary(max_size=40))
    return st.tuples(st.booleans(), encoded).map(lambda t: (BOM if t[0] else b"") + t[1])


def files(fields: list[str], good: dict) -> st.SearchStrategy[bytes]:
    return st.tuples(st.lists(lines(fields, good), min_size=1, max_size=4),
                     st.booleans()).map(lambda t: b"\n".join(t[0]) + (b"\n" if t[1] else b""))


def csv_files() -> st.SearchStrategy[bytes]:
    columns = st.lists(st.sampled_from(["question", "A", "B", "C", "choices", "answer", "id",
                                        "perturbed_answer", "\ufeffquestion"]),
                       min_size=1, max_size=6, unique=True)
    cell = st.one_of(st.text(max_size=8), st.sampled_from(['"x,y"', '"[\\"a\\", 1]"', "[", "0",
                                                           "B", '"', "\u200b", "\x00"]))
    rows = st.lists(st.lists(cell, max_size=7).map(",".join), max_size=4)
    text = st.tuples(columns.map(",".join), rows).map(lambda t: "\n".join([t[0], *t[1]]))
    return st.tuples(st.booleans(), text.map(str.encode), st.binary(max_size=20)).map(
        lambda t: (BOM if t[0] else b"") + t[1] + (t[2] if t[2][:1] == b"\n" else b""))


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir())}


def assert_one_readable_line(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message
    assert message.isprintable(), f"invisible characters in {message!r}"


def reads_or_refuses(read, folder: Path) -> None:
    before = snapshot(folder)
    try:
        read()
    except InputError as err:
        assert_one_readable_line(str(err))
    assert snapshot(folder) == before


QUESTION_FIELDS = ["question", "choices", "answer", "id", "subject", "perturbed_answer"]
GOOD_QUESTION = {"question": "Q?", "choices": ["x", "y"], "answer": 1}


@SETTINGS
@given(data=files(QUESTION_FIELDS, GOOD_QUESTION))
def test_question_jsonl_reader(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.jsonl"
        path.write_bytes(data)

        def read():
            assert all(isinstance(q, Question) for q in load_questions(path))

        reads_or_refuses(read, Path(tmp))


@SETTINGS
@given(data=csv_files())
def test_question_csv_reader(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "q.csv"
        path.write_bytes(data)
        reads_or_refuses(lambda: load_questions(path), Path(tmp))


RECORD = {"id": "q1", "subject": "geography", "original_question": QUESTION.question,
          "adversarial_question": "Which city?", "choices": list(QUESTION.choices),
          "answer": 0, "answer_letter": "A", "eligible": True, "target_letter": "B",
          "changed": True, "success": True, "proposals": 9, "unusable_proposals": 1,
          "unscored": 2}
OPTIONS = {k: v for k, v in asdict(SecaConfig(target="t")).items() if k != "seed"}


@SETTINGS
@given(results=files(list(RECORD), RECORD),
       config=st.one_of(st.just(json.dumps({"options": OPTIONS, "seed": 0}).encode()),
                        st.builds(lambda v: json.dumps({"options": v}).encode(), values),
                        st.binary(max_size=30)))
def test_run_reader(results, config):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.json").write_bytes(config)
        (folder / "results.jsonl").write_bytes(results)
        reads_or_refuses(lambda: read_run(folder, check=check_record), folder)
        reads_or_refuses(lambda: matched_budgets(folder, [QUESTION], "t", "auto"), folder)


@SETTINGS
@given(data=st.one_of(st.binary(max_size=200),
                      st.binary(min_size=100, max_size=600).map(
                          lambda b: b"SQLite format 3\x00" + b)))
def test_ledger_show(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.sqlite"
        path.write_bytes(data)
        before = snapshot(Path(tmp))
        result = CliRunner().invoke(cli, ["ledger", "show", str(path)], prog_name="bbzo")
        assert result.exit_code == 1
        [line] = result.stderr.splitlines()
        assert_one_readable_line(line)
        assert "unexpected" not in line and "is not a bbzo ledger" in line
        assert snapshot(Path(tmp)) == before
