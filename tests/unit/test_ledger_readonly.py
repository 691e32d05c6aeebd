"""`bbzo ledger show` only reads: it creates, changes and locks nothing, and refuses a file
that is not a bbzo ledger with one line (before: an empty file became a WAL-mode ledger and
another application's SQLite file got a ``queries`` table and WAL journal for good)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from bbzo.blackbox.query import Ledger, QueryLayer, Request, Response
from bbzo.blackbox.query.ledger import open_readonly
from bbzo.blackbox.targets.base import Target
from bbzo.cli.main import cli
from bbzo.errors import InputError


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file in ``folder`` by name (a new -wal/-shm file shows up too)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir())}


class Echo(Target):
    id = "echo"
    capabilities = frozenset({"classify"})
    max_batch = 8

    def call(self, requests):
        return [Response({"probs": [[float(r.payload["x"])]]}) for r in requests]


def write_ledger(path: Path, n: int = 3) -> None:
    with Ledger(path) as book:
        QueryLayer(Echo(), ledger=book).submit([Request("classify", {"x": i}) for i in range(n)])


def show(path: Path):
    return CliRunner().invoke(cli, ["ledger", "show", str(path), "--json"], prog_name="bbzo")


def one_error_line(result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def foreign_sqlite(path: Path, sql: str) -> None:
    db = sqlite3.connect(path)
    db.execute(sql)
    db.commit()
    db.close()


@pytest.mark.parametrize("make", [
    lambda p: p.write_bytes(b""),
    lambda p: p.write_text("not a database at all\n"),
    lambda p: foreign_sqlite(p, "CREATE TABLE notes (body TEXT)"),
    lambda p: foreign_sqlite(p, "CREATE TABLE queries (id INTEGER, question TEXT)"),
], ids=["empty", "text", "other-app", "other-queries-table"])
def test_a_foreign_file_is_refused_and_left_as_it_was(tmp_path, make):
    path = tmp_path / "ledger.sqlite"
    make(path)
    before = snapshot(tmp_path)
    for target in (path, tmp_path):
        result = show(target)
        assert result.exit_code == 1
        assert "is not a bbzo ledger" in one_error_line(result)
    assert snapshot(tmp_path) == before
    if path.stat().st_size:
        with pytest.raises(InputError, match="is not a bbzo ledger"):
            Ledger(path, readonly=True)
    assert snapshot(tmp_path) == before


def test_another_apps_database_keeps_its_journal_mode(tmp_path):
    path = tmp_path / "app.db"
    foreign_sqlite(path, "CREATE TABLE notes (body TEXT)")
    assert show(path).exit_code == 1
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["notes"]
    db.close()


def test_a_closed_ledger_is_read_without_leaving_files(tmp_path):
    write_ledger(tmp_path / "ledger.sqlite")
    before = snapshot(tmp_path)
    assert list(before) == ["ledger.sqlite"]
    result = show(tmp_path)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["answered"] == 3
    assert snapshot(tmp_path) == before


def test_a_ledger_in_use_is_read_live_without_changing_it(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as book:  # a run still writing: its -wal file holds the answers
        QueryLayer(Echo(), ledger=book).submit([Request("classify", {"x": i}) for i in range(2)])
        names = sorted(p.name for p in tmp_path.iterdir())
        main = hashlib.sha256(path.read_bytes()).hexdigest()
        with Ledger(path, readonly=True) as reader:
            assert reader.summary().answered == 2
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                reader.note_hits({"x": 1})
        result = show(path)
        assert result.exit_code == 0 and json.loads(result.stdout)["answered"] == 2
        assert sorted(p.name for p in tmp_path.iterdir()) == names
        assert hashlib.sha256(path.read_bytes()).hexdigest() == main


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "ledger.sqlite"
    write_ledger(path)
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(InputError, match="schema v99"):
        open_readonly(path)
