"""``bbzo synth``: differentially private synthetic data (Private-GSD)."""

from __future__ import annotations

from pathlib import Path

import click

from bbzo.cli.console import note, print_json, print_table, progress_bars
from bbzo.cli.options import open_run, run_options
from bbzo.errors import InputError
from bbzo.privacy.gsd.domain import Domain, read_columns
from bbzo.privacy.gsd.synthesizer import MODES, PrivateGSD, fit_to_run


@click.group("synth")
def synth() -> None:
    """Differentially private synthetic data by a genetic algorithm (Private-GSD)."""


@synth.command("fit")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Private table: a CSV file with a header row, or .parquet (needs pyarrow).")
@click.option("--domain", "domain_file", required=True, type=click.Path(path_type=Path),
              help="Domain JSON: {column: size} or {\"columns\": {...}} (never from the data).")
@click.option("--epsilon", required=True, type=float, help="Privacy ε > 0.")
@click.option("--delta", type=float, default=None, help="Privacy δ in (0, 1) [default: 1/N²].")
@click.option("--queries", default="2way", show_default=True,
              help="Query classes to preserve, comma-separated: 1way, 2way, 3way, prefix, "
                   "range, halfspace.")
@click.option("--mode", type=click.Choice(MODES), default="oneshot", show_default=True,
              help="oneshot: measure every workload; adaptive: select and measure in rounds; "
                   "hybrid: 1/2-way one-shot, then adaptive rounds on the rest.")
@click.option("--rows", type=click.IntRange(min=2), default=2000, show_default=True,
              help="Synthetic rows N'.")
@click.option("--generations", type=click.IntRange(min=1), default=20000, show_default=True,
              help="Most GA generations in all.")
@click.option("--rounds", type=click.IntRange(min=1), default=None,
              help="Adaptive rounds T [default: 3].")
@click.option("--top-k", type=click.IntRange(min=1), default=None,
              help="Workloads selected and measured per adaptive round [default: workloads / "
                   "rounds].")
@click.option("--max-workloads", type=click.IntRange(min=1), default=None,
              help="One-shot: measure at most this many workloads per class (a public random "
                   "subset) [default: as many as 4,194,304 cells allow].")
@click.option("--select-share", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=None,
              help="Share of each adaptive round's privacy spent selecting [default: 0.1].")
@click.option("--oneshot-share", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=None,
              help="Share of the privacy budget hybrid mode measures one-shot [default: 0.5].")
@click.option("--evaluate", is_flag=True,
              help="Add marginal errors against the true data to the summary (NOT private).")
@run_options
def fit(data: Path, domain_file: Path, epsilon: float, delta: float | None, queries: str,
        mode: str, rows: int, generations: int, rounds: int | None, top_k: int | None,
        max_workloads: int | None, select_share: float | None, oneshot_share: float | None,
        evaluate: bool, out: Path | None, seed: int, resume: bool, json_output: bool) -> None:
    """Fit a private synthetic table; writes synthetic.csv, privacy_ledger.jsonl,
    measurements.npz, checkpoint.pkl, summary.json and config.json to --out. --resume
    continues a killed fit from its saved measurements and GA checkpoint (never measuring
    twice)."""
    shares = {k: v for k, v in (("select_share", select_share),
                                ("oneshot_share", oneshot_share)) if v is not None}
    try:
        gsd = PrivateGSD(epsilon, delta, queries=queries, mode=mode, rows=rows,
                         generations=generations, rounds=rounds, top_k=top_k, seed=seed,
                         max_workloads=max_workloads, **shares)
        columns = read_columns(data)
        domain, codes, _ = gsd.check(columns, Domain.from_file(domain_file))
    except InputError as error:
        raise click.UsageError(str(error)) from None
    run = open_run(out, resume=resume, command="synth")
    try:
        run.write_config({"data": str(data), "domain": str(domain_file), "epsilon": epsilon,
                          "delta": delta, "queries": queries, "mode": mode, "rows": rows,
                          "generations": generations, "rounds": rounds, "top_k": top_k,
                          "max_workloads": max_workloads, **shares, "evaluate": evaluate}, seed)
    except InputError as error:  # a resume with other settings
        raise click.UsageError(str(error)) from None
    with progress_bars() as progress:
        summary = fit_to_run(gsd, codes, domain, run, order=list(columns), evaluate=evaluate,
                             progress=progress, resume=run.resumed)
    if json_output:
        print_json(summary)
        return
    rows_out = [("epsilon", f"{summary['epsilon']:g}"), ("delta", f"{summary['delta']:.3g}"),
                ("rho", f"{summary['rho']:.6g}"),
                *((f"rho {k}", f"{v:.6g}") for k, v in summary["rho_by_mechanism"].items()),
                ("workloads", summary["workloads"]), ("generations", summary["generations"]),
                ("seconds", f"{summary['seconds']:.1f}")]
    for name, errors in summary.get("evaluation", {}).items():
        if isinstance(errors, dict):
            rows_out.append((f"{name} error max / mean (NOT private)",
                             f"{errors['max']:.4f} / {errors['mean']:.2e}"))
    print_table(f"Private-GSD ({mode}, {','.join(summary['queries'])})", ["", "value"],
                rows_out)
    note(f"wrote {run.path}: {', '.join(summary['files'])}")
