"""A sweep of ``PrivateGSD`` fits over privacy budgets ε and seeds, with the marginal errors of
each fit and an error-vs-ε plot.

Folder layout under ``out``: one ``synth fit`` run folder per (ε, seed), ``eps<ε>-seed<s>``
(``synthetic.csv``, ``privacy_ledger.jsonl``, ``summary.json``, ``config.json``); ``sweep.jsonl``
(one record per finished fit: ε, seed, seconds, generations, errors per query class);
``sweep.json`` (per ε: mean and standard deviation over seeds of each error); ``sweep.png``.
Resumable: a sub-run with a ``summary.json`` is not fitted again, and a record already in
``sweep.jsonl`` is not measured again; an unfinished sub-run is fitted again from scratch.

NOT PRIVATE as a whole: the errors are measured on the true data (each sub-run's synthetic
table alone keeps its fit's guarantee, and each fit spends its own budget).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bbzo.checks import positive
from bbzo.errors import InputError
from bbzo.privacy.gsd.domain import Domain
from bbzo.privacy.gsd.evaluate import NON_PRIVATE_NOTE, marginal_errors
from bbzo.privacy.gsd.queries import QUERY_CLASSES, parse_query_classes
from bbzo.privacy.gsd.synthesizer import PrivateGSD, fit_to_run
from bbzo.runs import MANIFEST, RunFolder

RECORDS, SUMMARY, PLOT = "sweep.jsonl", "sweep.json", "sweep.png"
STATISTICS = ("max", "mean")
Progress = Callable[[str, int, int], None]


def sub_run_name(epsilon: float, seed: int) -> str:
    """Folder name of the fit at (``epsilon``, ``seed``): ``eps0.5-seed1``."""
    return f"eps{epsilon:g}-seed{seed}"


def run_sweep(data: Any, domain: Domain | str | os.PathLike, epsilons: Sequence[float],
              seeds: Sequence[int], out: str | os.PathLike | RunFolder, *,
              fit_options: dict[str, Any] | None = None,
              classes: Sequence[str] = ("2way", "3way"), source: dict[str, Any] | None = None,
              progress: Progress | None = None) -> dict[str, Any]:
    """Fit ``PrivateGSD(ε, seed=s, **fit_options)`` on ``data`` over ``domain`` for every ε in
    ``epsilons`` and s in ``seeds`` into sub-runs of ``out`` (see the module docstring),
    measure ``marginal_errors`` of each on ``classes``, and write the summary and the plot.
    ``source`` (e.g. the data and domain file names) is recorded in each sub-run's config.
    Every input is checked (the data encoded, every fit's options) before the first fit.
    Returns the summary (``sweep.json``)."""
    options = dict(fit_options or {})
    for key in ("epsilon", "seed"):
        if key in options:
            raise InputError(f"fit_options must not set {key!r}; give it in "
                             f"{'epsilons' if key == 'epsilon' else 'seeds'}")
    epsilons = sorted({positive("epsilon", e) for e in epsilons})
    seeds = sorted({int(s) for s in seeds})
    if not epsilons or not seeds:
        raise InputError("a sweep needs at least one epsilon and one seed")
    if min(seeds) < 0:
        raise InputError(f"seeds must be ≥ 0, got {min(seeds)}")
    domain = domain if isinstance(domain, Domain) else Domain.from_file(domain)
    classes = [c for c in parse_query_classes(list(classes)) if QUERY_CLASSES[c] <= len(domain)]
    if not classes:
        raise InputError(f"the domain has {len(domain)} columns, too few for the query classes "
                         f"to measure; give classes with fewer columns, e.g. 1way")
    plan = {(e, s): PrivateGSD(e, seed=s, **options) for e in epsilons for s in seeds}
    codes = next(iter(plan.values())).check(data, domain)[1]
    for gsd in plan.values():
        gsd.check(codes, domain)
    folder = out if isinstance(out, RunFolder) else RunFolder(out, resume=True)
    done = {(r["epsilon"], r["seed"]) for r in folder.read_jsonl(RECORDS)}
    for i, ((epsilon, seed), gsd) in enumerate(plan.items()):
        if progress is not None:
            progress("sweep", i, len(plan))
        if (epsilon, seed) not in done:
            config = {**(source or {}), **options, "epsilon": epsilon}
            folder.append_jsonl(RECORDS, _fit_and_measure(gsd, codes, domain, folder.path,
                                                          config, classes, progress))
    if progress is not None:
        progress("sweep", len(plan), len(plan))
    records = [r for r in folder.read_jsonl(RECORDS)
               if r["epsilon"] in epsilons and r["seed"] in seeds]
    summary = summarise(records, classes)
    summary.update({"seeds": seeds, "fit_options": options, "non_private": True,
                    "note": NON_PRIVATE_NOTE})
    folder.write_json(SUMMARY, summary)
    with folder.atomic(PLOT) as tmp:
        plot_errors(summary, tmp)
    return summary


def _fit_and_measure(gsd: PrivateGSD, codes: np.ndarray, domain: Domain, root: Path,
                     config: dict[str, Any], classes: list[str],
                     progress: Progress | None) -> dict[str, Any]:
    """The sweep record of one (ε, seed): fitted into its sub-run (``config`` recorded)
    unless that one finished."""
    path = root / sub_run_name(gsd.epsilon, gsd.seed)
    if not (path / "summary.json").is_file():
        if path.is_dir() and (path / MANIFEST).is_file():
            shutil.rmtree(path)  # an unfinished fit of ours: its noise is drawn again
        run = RunFolder(path)
        run.write_config(config, gsd.seed)
        fit_to_run(gsd, codes, domain, run, order=list(domain.names), progress=progress)
    fitted = RunFolder(path, resume=True).read_json("summary.json")
    synthetic = domain.encode(path / "synthetic.csv")
    return {"epsilon": gsd.epsilon, "seed": gsd.seed, "run": path.name,
            "seconds": fitted["seconds"], "generations": fitted["generations"],
            "errors": marginal_errors(domain.sizes, codes, synthetic, classes)}


def summarise(records: Sequence[dict[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    """Per ε (ascending): the seeds measured and the mean and standard deviation over them
    (``ddof=0``) of ``seconds`` and of each class's max and mean error."""
    rows = []
    for epsilon in sorted({r["epsilon"] for r in records}):
        mine = [r for r in records if r["epsilon"] == epsilon]
        row: dict[str, Any] = {"epsilon": epsilon, "seeds": sorted(r["seed"] for r in mine)}
        columns = {"seconds": [r["seconds"] for r in mine]}
        for c in classes:
            for stat in STATISTICS:
                columns[f"{c}_{stat}"] = [r["errors"][c][stat] for r in mine]
        for name, values in columns.items():
            row[name] = {"mean": float(np.mean(values)), "sd": float(np.std(values))}
        rows.append(row)
    return {"epsilons": rows, "classes": list(classes)}


def plot_errors(summary: dict[str, Any], path: str | os.PathLike) -> None:
    """Error vs ε (log x axis): one line per query class and statistic, mean ± sd over seeds
    as error bars; written as a PNG to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = summary["epsilons"]
    x = [r["epsilon"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in summary["classes"]:
        for stat, style in zip(STATISTICS, ("-o", "--s"), strict=True):
            key = f"{c}_{stat}"
            ax.errorbar(x, [r[key]["mean"] for r in rows], yerr=[r[key]["sd"] for r in rows],
                        fmt=style, capsize=3, label=f"{c} {stat}")
    ax.set_xscale("log")
    ax.set_xlabel("privacy ε")
    ax.set_ylabel("absolute error (normalised counts)")
    ax.set_title("Private-GSD error vs ε (mean ± sd over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
