"""Reading a run folder without touching it: ``read_run`` for the commands that read another
run (``bbzo attack eval``, ``--match``), ``read_records`` for one JSONL file of records.

Nothing is created, changed or deleted, so a run still writing can be read: its last line,
when it has no newline yet and is not valid JSON, is a record being written and is left out.
Every other defect is a one-line ``InputError`` naming the file, the line and the field: a
folder without ``config.json``, a ``config.json`` that is not an object with ``options``, a
line that is not one JSON object (nested too deeply included), a record missing a field or
holding a value of the wrong type.
"""

from __future__ import annotations

import json
import os
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbzo.errors import InputError

CONFIG = "config.json"
RESULTS = "results.jsonl"
SUMMARY = "summary.json"

# Field name -> the JSON types it may hold (``int`` never accepts ``true``/``false``).
Fields = Mapping[str, tuple[type, ...]]
# Checks one record; raises InputError naming ``where`` (file and line) and the field.
Check = Callable[[dict, str], None]

_SHOW = reprlib.Repr()
_SHOW.maxstring = 60
_SHOW.maxother = 60


def show(value: Any) -> str:
    """A short one-line repr of a value read from a file, invisible characters escaped."""
    return _SHOW.repr(value)


@dataclass(frozen=True)
class RunView:
    """What a run folder holds, as read.

    Attributes:
        path: the folder.
        config: ``config.json`` (``options``: the run's settings, ``seed``, versions, ...).
        records: the complete records of the results file, in file order.
        summary: ``summary.json``, or None while the run has not finished.
        torn: the results file ends in a record still being written (left out).
    """

    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None
    torn: bool

    @property
    def options(self) -> dict[str, Any]:
        """The run's settings (``config["options"]``)."""
        return self.config["options"]


def read_run(path: str | os.PathLike, *, check: Check | None = None,
             hint: str = "give the --out folder of a bbzo run") -> RunView:
    """Read the run folder ``path`` (module doc), ``check`` applied to every record.

    Args:
        path: the run's ``--out`` folder.
        check: called as ``check(record, where)`` on each record of ``results.jsonl``.
        hint: what was expected and how to fix a wrong folder, ending every message about
            the folder.
    """
    folder = Path(path)
    missing = [name for name in (CONFIG, RESULTS) if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{folder} is not a bbzo run folder ({' and '.join(missing)} "
                         f"missing); {hint}")
    config = _read_object(folder / CONFIG, hint)
    if not isinstance(config.get("options"), dict):
        raise InputError(f"{folder / CONFIG}: field 'options' must be a JSON object (the run's "
                         f"settings), got {show(config.get('options'))}; {hint}")
    records, torn = read_records(folder / RESULTS, check)
    summary = _read_object(folder / SUMMARY, hint) if (folder / SUMMARY).is_file() else None
    return RunView(folder, config, records, summary, torn)


def read_records(path: str | os.PathLike,
                 check: Check | None = None) -> tuple[list[dict[str, Any]], bool]:
    """The JSON-object lines of ``path`` and whether a torn last line was left out.

    Blank lines are skipped; ``check(record, where)`` is called on every record.
    """
    file = Path(path)
    lines = _read_text(file).split("\n")
    records: list[dict[str, Any]] = []
    torn = False
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = _loads(line, f"{file} line {number}")
        except InputError:
            if number == len(lines):  # no newline after it: still being written
                torn = True
                continue
            raise
        if not isinstance(record, dict):
            raise InputError(f"{file} line {number}: expected one JSON object, got "
                             f"{type(record).__name__}")
        if check is not None:
            check(record, f"{file} line {number}")
        records.append(record)
    return records, torn


def check_fields(record: Mapping[str, Any], fields: Fields, where: str) -> None:
    """InputError naming ``where`` and the field when ``record`` lacks one of ``fields`` or
    holds a value of another type."""
    for name, types in fields.items():
        if name not in record:
            raise InputError(f"{where}: field {name!r} is missing; this file was not written "
                             f"by this bbzo or was edited")
        value = record[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise InputError(f"{where}: field {name!r} must be {wanted}, got {show(value)}")


def _read_object(file: Path, hint: str) -> dict[str, Any]:
    value = _loads(_read_text(file), str(file), whole=True)
    if not isinstance(value, dict):
        raise InputError(f"{file} must hold a JSON object, got {type(value).__name__}; {hint}")
    return value


def _read_text(file: Path) -> str:
    try:
        data = file.read_bytes()
    except OSError as err:
        raise InputError(f"cannot read {file}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise InputError(f"{file} line {line}: not UTF-8 text (byte {err.start})") from None


def _loads(text: str, where: str, *, whole: bool = False) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        at = f"line {err.lineno} column {err.colno}" if whole else f"column {err.colno}"
        raise InputError(f"{where}: not valid JSON ({err.msg} at {at})") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply") from None
    except ValueError:  # json.loads refuses integers of over 4300 digits
        raise InputError(f"{where}: not valid JSON (a number of over 4300 digits)") from None
