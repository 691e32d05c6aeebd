"""``bbzo demo``: the ZO engine on three test problems with six methods."""

from __future__ import annotations

from pathlib import Path

import click

from bbzo.blackbox.zo.demo import DEFAULT_BUDGET, MIN_BUDGET, run_demo
from bbzo.cli.console import note, print_json, print_table, progress_bars
from bbzo.cli.options import open_run, run_options


@click.command("demo")
@click.option("--budget", type=click.IntRange(min=MIN_BUDGET), default=DEFAULT_BUDGET,
              show_default=True, help="Queries per problem x method run.")
@run_options
def demo(budget: int, out: Path | None, seed: int, resume: bool, json_output: bool) -> None:
    """Minimise a quadratic, Rosenbrock and a logistic regression with ZO methods.

    Writes results.jsonl, curves.jsonl, loss_vs_queries.png, config.json and summary.json.
    """
    run = open_run(out, resume=resume, command="demo")
    with progress_bars() as progress:
        summary = run_demo(run, seed=seed, budget=budget, progress=progress)
    if json_output:
        print_json(summary)
        return
    rows, previous = [], None
    for r in summary["results"]:
        rows.append(("" if r["problem"] == previous else r["problem"],
                     f"{r['method']}/{r['estimator']}", f"{r['fun']:.5g}", f"{r['gap']:.1e}",
                     r["nqueries"], r["nit"], f"{r['seconds']:.2f}"))
        previous = r["problem"]
    print_table(f"ZO demo: gap = best f - f*, {budget} queries per run, seed {seed}",
                ["problem", "method", "best f", "gap", "queries", "iters", "sec"], rows)
    note(f"wrote {run.path}: {', '.join(summary['files'])}")
