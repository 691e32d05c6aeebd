"""Options every run command shares (``--out``, ``--seed``, ``--resume``, ``--json``), options
whose defaults come from a method's settings dataclass (a bad value of such a field is a usage
error on its option: ``bbzo.cli.main``)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bbzo.errors import InputError
from bbzo.runs import RunFolder, check_run_folder
from bbzo.runs.settings import field_default


def run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the shared run options; the command receives ``out``, ``seed``, ``resume`` and
    ``json_output``."""
    decorators = [
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Run folder for config.json, results and summary.json "
                          "[default: runs/<command>-<time>]."),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Seed of every random draw; the same seed gives the same results."),
        click.option("--resume", is_flag=True,
                     help="Continue the run in a non-empty --out folder (same options)."),
        click.option("--json", "json_output", is_flag=True,
                     help="Print the summary as JSON on stdout instead of a table."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def config_option(cls: type, field: str, *, help: str, type: Any = None,
                  default_text: str | None = None) -> Callable[..., Any]:
    """A ``--<field>`` option whose default is the dataclass field's (the option itself
    defaults to None: "not given", so a preset or the dataclass decides); the help shows
    the default (``default_text`` overrides how)."""
    shown = default_text if default_text is not None else field_default(cls, field)
    return click.option(f"--{field.replace('_', '-')}", field, type=type, default=None,
                        help=f"{help} [default: {'none' if shown is None else shown}]")


def given(params: dict[str, Any], cls: type) -> dict[str, Any]:
    """The options of ``params`` the user gave (not None) that are fields of ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in params.items() if k in names and v is not None}


def out_path(out: Path | None, *, resume: bool, command: str) -> Path:
    """The run folder for ``--out`` (a fresh time-stamped one when omitted), checked without
    writing anything; a folder that cannot be used is a usage error on ``--out``."""
    if out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{command}-{stamp}"
    try:
        return check_run_folder(out, resume=resume)
    except (InputError, OSError) as error:
        raise click.BadParameter(str(error), param_hint="'--out'") from None


def open_run(out: Path | None, *, resume: bool, command: str) -> RunFolder:
    """The opened run folder for ``--out`` (``out_path``, then created or repaired)."""
    path = out_path(out, resume=resume, command=command)
    try:
        return RunFolder(path, resume=resume)
    except (InputError, OSError) as error:
        raise click.BadParameter(str(error), param_hint="'--out'") from None
