"""``bbzo ledger show RUN``: what a run's ledger holds (requests, cache hits, tokens, cost)."""

from __future__ import annotations

from pathlib import Path

import click

from bbzo.blackbox.query.ledger import Ledger
from bbzo.cli.console import print_json, print_table

LEDGER_FILE = "ledger.sqlite"


def ledger_path(run: str) -> Path:
    """The ledger of a run folder, or the file itself when ``run`` is a SQLite file."""
    path = Path(run)
    if path.is_dir():
        path = path / LEDGER_FILE
    if not path.is_file():
        raise click.BadParameter(f"no ledger at {path}: give a run folder holding "
                                 f"{LEDGER_FILE} or the ledger file itself", param_hint="RUN")
    return path


@click.group("ledger")
def ledger() -> None:
    """Inspect the SQLite ledger of a run."""


@ledger.command("show")
@click.argument("run")
@click.option("--json", "json_output", is_flag=True, help="Print the summary as JSON on stdout.")
def show(run: str, json_output: bool) -> None:
    """Summarise the ledger of RUN (a run folder or a ledger file); reads it only, never
    changes it, and refuses a file that is not a bbzo ledger."""
    with Ledger(ledger_path(run), readonly=True) as book:
        summary = book.summary().to_dict()
    if json_output:
        print_json(summary)
        return

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    print_table(f"Ledger {run}", ["", "value"], [
        ("requests", summary["requests"]), ("answered", summary["answered"]),
        ("errors", summary["errors"]), ("pending (sent, never answered)", summary["pending"]),
        ("cache hits (free)", summary["cache_hits"]), ("target calls", summary["attempts"]),
        ("prompt tokens", summary["prompt_tokens"]),
        ("completion tokens", summary["completion_tokens"]),
        ("cost (USD)", f"{summary['cost']:.4f}"),
        ("latency p50 / p90 / p99 (s)", " / ".join(seconds(summary[f"latency_p{p}_s"])
                                                   for p in (50, 90, 99))),
    ])
    print_table("By target", ["target", "requests", "answered", "cache hits", "tokens", "cost"],
                [(t, v["requests"], v["answered"], v["cache_hits"], v["tokens"],
                  f"{v['cost']:.4f}") for t, v in summary["targets"].items()])
    if summary["recent_errors"]:
        print_table("Recent errors", ["error"], [(e,) for e in summary["recent_errors"]])
