"""Options every run command shares: ``--out``, ``--seed``, ``--resume``, ``--json``."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bbzo.errors import InputError
from bbzo.runs import RunFolder


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


def open_run(out: Path | None, *, resume: bool, command: str) -> RunFolder:
    """The run folder for ``--out`` (a fresh time-stamped one when omitted); a folder that
    cannot be used is a usage error on ``--out``."""
    if out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{command}-{stamp}"
    try:
        return RunFolder(out, resume=resume)
    except (InputError, OSError) as error:
        raise click.BadParameter(str(error), param_hint="'--out'") from None
