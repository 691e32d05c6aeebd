"""Terminal output shared by every command: tables and JSON on stdout, progress bars and
errors on stderr (so ``--json`` output can be piped)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

err = Console(stderr=True, highlight=False)


def _stdout() -> Console:
    """A console on stdout; off a terminal (a pipe, a file) it is wide enough that tables keep
    their natural width instead of folding to 80 columns."""
    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=400)


def error_line(message: str) -> None:
    """One red line on stderr: ``error: <message>`` (newlines folded into spaces)."""
    err.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", soft_wrap=True)


def note(message: str) -> None:
    """A dim informational line on stderr."""
    err.print(f"[dim]{escape(message)}[/]", soft_wrap=True)


def print_json(obj: Any) -> None:
    """``obj`` as indented JSON on stdout, nothing else."""
    click.echo(json.dumps(obj, indent=2, default=str))


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on stdout; cells are shown with ``str``."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))
    _stdout().print(table)


@contextlib.contextmanager
def progress_bars() -> Iterator[Any]:
    """Yield a callback ``progress(label, done, total)`` drawing one bar per label on stderr.

    Bars are drawn only when stderr is a terminal.
    """
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err, disable=not err.is_terminal)
    tasks: dict[str, Any] = {}

    def update(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = bars.add_task(escape(label), total=total)
        bars.update(tasks[label], completed=done, total=total)

    with bars:
        yield update
