"""``bbzo synth``: differentially private synthetic data (Private-GSD)."""

from __future__ import annotations

from pathlib import Path

import click

from bbzo.cli.console import note, print_json, print_table, progress_bars
from bbzo.cli.options import open_run, out_path, run_options
from bbzo.errors import InputError
from bbzo.privacy.gsd.domain import Domain, read_columns
from bbzo.privacy.gsd.evaluate import evaluate_run
from bbzo.privacy.gsd.queries import parse_query_classes
from bbzo.privacy.gsd.sweep import STATISTICS, run_sweep
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


@synth.command("eval")
@click.argument("run_dir", metavar="RUN", type=click.Path(file_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="The true table (CSV) the run was fitted on; its rows are read (NOT private).")
@click.option("--target", required=True, help="Column the classifiers predict from the others.")
@click.option("--domain", "domain_file", type=click.Path(path_type=Path), default=None,
              help="Domain JSON [default: the one named in RUN/config.json].")
@click.option("--queries", default=None,
              help="Query classes whose errors to report [default: the run's, 2way, 3way].")
@click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.3, show_default=True, help="Share of the true rows held out for testing.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for eval.json [default: RUN itself].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the train/test split.")
@click.option("--json", "json_output", is_flag=True, help="Print eval.json on stdout.")
def eval_run(run_dir: Path, data: Path, target: str, domain_file: Path | None,
             queries: str | None, test_fraction: float, out: Path | None, seed: int,
             json_output: bool) -> None:
    """Machine-learning efficacy (train on RUN's synthetic.csv, test on held-out true rows,
    against training on true rows) and marginal errors of a synth fit run; writes eval.json.
    NOT private: reads the true data."""
    out_path(out or run_dir, resume=out is None, command="synth-eval")
    try:
        result = evaluate_run(run_dir, read_columns(data), target, domain=domain_file,
                              classes=None if queries is None else parse_query_classes(queries),
                              test_fraction=test_fraction, seed=seed)
    except InputError as error:
        raise click.UsageError(str(error)) from None
    open_run(out or run_dir, resume=out is None, command="synth-eval").write_json(
        "eval.json", result)
    if json_output:
        print_json(result)
        return
    ml = result["ml_efficacy"]
    rows = [(k, f"{ml['synthetic'][k]:.4f}", f"{ml['real'][k]:.4f}", f"{ml['ratio'][k]:.3f}")
            for k in ml["real"]]
    rows += [(f"{name} error max / mean", f"{e['max']:.4f} / {e['mean']:.2e}", "", "")
             for name, e in result["marginal_errors"].items()]
    print_table(f"{run_dir} predicting {target!r} (NOT private: reads the true data)",
                ["", "train on synthetic", "train on real", "ratio"], rows)
    note(f"wrote {(out or run_dir) / 'eval.json'}")


def float_list(ctx: click.Context, param: click.Parameter, value: str) -> list[float]:
    """``"0.1,0.5,1"`` as floats; anything else is a usage error on the option."""
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"give comma-separated numbers, got {value!r}") from None


def int_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    """``"0,1,2"`` as integers; anything else is a usage error on the option."""
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"give comma-separated integers, got {value!r}") from None


@synth.command("sweep")
@click.option("--data", required=True, type=click.Path(path_type=Path),
              help="Private table, a CSV file with a header row.")
@click.option("--domain", "domain_file", required=True, type=click.Path(path_type=Path),
              help="Domain JSON (never from the data).")
@click.option("--epsilons", default="0.1,0.5,1", show_default=True, callback=float_list,
              help="Privacy budgets ε, comma-separated; one fit per ε and seed.")
@click.option("--seeds", default="0,1,2", show_default=True, callback=int_list,
              help="Seeds, comma-separated.")
@click.option("--queries", default="2way", show_default=True, help="Query classes each fit "
              "preserves (as synth fit).")
@click.option("--mode", type=click.Choice(MODES), default="oneshot", show_default=True,
              help="As synth fit.")
@click.option("--rows", type=click.IntRange(min=2), default=2000, show_default=True,
              help="Synthetic rows N'.")
@click.option("--generations", type=click.IntRange(min=1), default=20000, show_default=True,
              help="Most GA generations per fit.")
@click.option("--rounds", type=click.IntRange(min=1), default=None, help="As synth fit.")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True,
              help="As synth fit.")
@click.option("--measure", default="2way,3way", show_default=True,
              help="Query classes whose errors are measured on the true data (NOT private).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Sweep folder; rerun with the same folder to resume (finished fits are "
                   "skipped) [default: runs/synth-sweep-<time>].")
@click.option("--json", "json_output", is_flag=True, help="Print sweep.json on stdout.")
def sweep(data: Path, domain_file: Path, epsilons: list[float], seeds: list[int], queries: str,
          mode: str, rows: int, generations: int, rounds: int | None, top_k: int, measure: str,
          out: Path | None, json_output: bool) -> None:
    """Fit at every ε and seed into sub-runs of --out, measure 2-way/3-way errors on the true
    data, write sweep.jsonl, sweep.json (mean ± sd over seeds) and sweep.png."""
    folder = out_path(out, resume=True, command="synth-sweep")
    options = {"queries": queries, "mode": mode, "rows": rows, "generations": generations,
               "rounds": rounds, "top_k": top_k}
    try:
        with progress_bars() as progress:
            summary = run_sweep(read_columns(data), Domain.from_file(domain_file), epsilons, seeds,
                                folder, fit_options=options, classes=parse_query_classes(measure),
                                source={"data": str(data), "domain": str(domain_file)},
                                progress=progress)
    except InputError as error:
        raise click.UsageError(str(error)) from None
    if json_output:
        print_json(summary)
        return
    rows_out = [(f"{r['epsilon']:g}", len(r["seeds"]),
                 *(f"{r[f'{c}_{s}']['mean']:.4f} ± {r[f'{c}_{s}']['sd']:.4f}"
                   for c in summary["classes"] for s in STATISTICS),
                 f"{r['seconds']['mean']:.1f}") for r in summary["epsilons"]]
    print_table("Private-GSD sweep (errors NOT private: measured on the true data)",
                ["epsilon", "seeds", *(f"{c} {s}" for c in summary["classes"]
                                       for s in STATISTICS), "seconds"], rows_out)
    note(f"wrote {folder}: sweep.jsonl, sweep.json, sweep.png and one run folder per fit")
