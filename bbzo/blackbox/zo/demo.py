"""The engine demo: a few ZO methods on the standard test problems, written to a run folder.

Files written: ``config.json``, ``results.jsonl`` (one record per problem × method),
``curves.jsonl`` (best value against queries, at most ``CURVE_POINTS`` points per run),
``loss_vs_queries.png`` (one panel per problem, gap to the optimum on a log scale) and
``summary.json``. With ``resume`` the runs already in ``results.jsonl`` are kept, not redone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bbzo.blackbox.zo.minimize import minimize
from bbzo.blackbox.zo.problems import Problem, standard_problems
from bbzo.errors import InputError
from bbzo.plots import plot_panels
from bbzo.runs import RunFolder, as_run_folder

Progress = Callable[[str, int, int], None]  # (task label, queries done, queries planned)

METHODS: tuple[tuple[str, str], ...] = (
    ("zo-sgd", "rge"), ("zo-momentum", "rge"), ("zo-adam", "rge"), ("zo-sign-sgd", "rge"),
    ("zo-sgd", "cge"), ("zo-adam", "rank"),
)
MIN_BUDGET = 100
DEFAULT_BUDGET = 20_000
CURVE_POINTS = 200


def run_demo(out: str | os.PathLike | RunFolder, *, seed: int = 0, budget: int = DEFAULT_BUDGET,
             resume: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Minimise every standard problem with every demo method and write the run folder.

    Args:
        out: run folder (path or ``RunFolder``); must be empty unless ``resume``.
        seed: seed of every run (same seed → same numbers).
        budget: queries per problem × method run (at least ``MIN_BUDGET``).
        resume: continue a folder made by an earlier call with the same seed and budget.
        progress: called as ``progress(label, done, planned)`` while a run spends queries.

    Returns:
        The summary (also written to ``summary.json``).
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < MIN_BUDGET:
        raise InputError(f"budget must be an integer of at least {MIN_BUDGET} queries per run, "
                         f"got {budget!r}")
    run = as_run_folder(out, resume=resume)
    problems = standard_problems()
    run.write_config({"budget": budget, "problems": [p.name for p in problems],
                      "methods": [f"{m}/{e}" for m, e in METHODS]}, seed)
    done = {(r["problem"], r["method"], r["estimator"]) for r in run.read_jsonl("results.jsonl")}
    for problem in problems:
        for method, estimator in METHODS:
            if (problem.name, method, estimator) in done:
                continue
            record, curve = _solve(problem, method, estimator, budget, seed, progress)
            run.append_jsonl("curves.jsonl", curve)
            run.append_jsonl("results.jsonl", record)
    results = run.read_jsonl("results.jsonl")
    _plot(run, problems, run.read_jsonl("curves.jsonl"))
    summary = {
        "seed": seed, "budget": budget, "runs": len(results),
        "total_queries": sum(r["nqueries"] for r in results),
        "seconds": round(sum(r["seconds"] for r in results), 3),
        "best": {p.name: _best(p.name, results) for p in problems},
        "results": results,
        "files": ["config.json", "results.jsonl", "curves.jsonl", "loss_vs_queries.png",
                  "summary.json"],
        "out": str(run.path),
    }
    run.write_summary(summary)
    return summary


def _solve(problem: Problem, method: str, estimator: str, budget: int, seed: int,
           progress: Progress | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """One minimize run → (result record, downsampled curve record)."""
    label = f"{problem.name} {method}/{estimator}"

    def report(info: dict) -> None:
        if progress is not None:
            progress(label, info["nqueries"], budget)

    t0 = time.perf_counter()
    res = minimize(problem.fun, problem.x0, method=method, estimator=estimator, budget=budget,
                   seed=seed, callback=report)
    seconds = time.perf_counter() - t0
    if progress is not None:
        progress(label, budget, budget)
    key = {"problem": problem.name, "method": method, "estimator": estimator}
    record = {**key, "fun": res.fun, "f_star": problem.f_star, "gap": res.fun - problem.f_star,
              "reference": problem.reference, "nqueries": res.nqueries, "nit": res.nit,
              "lr": res.lr, "seconds": round(seconds, 4)}
    keep = np.unique(np.linspace(0, len(res.history) - 1, CURVE_POINTS).round().astype(int))
    points = [res.history[i] for i in keep]
    curve = {**key, "nqueries": [h["nqueries"] for h in points],
             "gap": [h["best"] - problem.f_star for h in points]}
    return record, curve


def _best(problem: str, results: list[dict[str, Any]]) -> dict[str, Any] | None:
    rows = [r for r in results if r["problem"] == problem]
    if not rows:
        return None
    top = min(rows, key=lambda r: r["gap"])
    return {"method": top["method"], "estimator": top["estimator"], "gap": top["gap"]}


def _plot(run: RunFolder, problems: list[Problem], curves: list[dict[str, Any]]) -> None:
    panels: dict[str, dict[str, tuple[list, list]]] = {p.name: {} for p in problems}
    for c in curves:  # a later record for the same run replaces an earlier one
        if c["problem"] in panels:
            panels[c["problem"]][f"{c['method']}/{c['estimator']}"] = (c["nqueries"], c["gap"])
    with run.atomic("loss_vs_queries.png") as tmp:
        plot_panels(tmp, panels, xlabel="queries", ylabel="best f − f*", logy=True)
