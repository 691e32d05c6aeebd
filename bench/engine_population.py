"""Population-search benchmark: incremental vs full-recount fitness on the 2-way marginal toy.

A 2,000 × 6 integer table (domain sizes 2–5), fitness = L1 distance of its 15 pair marginals'
counts to a planted table's; every child changes one row (``resample_rows``). The same
``PopulationSearch`` (same seed, so the same trajectory) runs once with counts updated from the
parent's (``Child.stats`` minus the old row's cells plus the new row's) and once recounting all
rows of every child. Reported: children scored per second by each objective alone (on the same
batches, interleaved, best of 5), whole generations per second (operators and bookkeeping
included), their ratios (target for the objective: >= 20x) and the 1-minute load average.

    python bench/engine_population.py [--quick] [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from marginal_toy import MarginalFitness, PairMarginals, planted_table  # noqa: E402

from bbzo.blackbox.zo.population import (  # noqa: E402
    PopulationSearch,
    population_minimize,
    resample_rows,
)

SIZES = np.array([2, 3, 4, 5, 2, 3])
ROWS = 2000
REPS = 5  # timed passes over the recorded generations, per objective


def _search(start: np.ndarray, children: int) -> PopulationSearch:
    return PopulationSearch([start], mutate=resample_rows(SIZES), elite_size=5,
                            children=children, seed=0)


def run(quick: bool) -> dict:
    """Measure both objectives; ``quick`` runs fewer generations (same table size)."""
    generations = 20 if quick else 300
    children = 100
    marginals = PairMarginals(SIZES)
    target = marginals.counts(planted_table(ROWS, SIZES, 0))
    start = np.random.default_rng(1).integers(0, SIZES, (ROWS, len(SIZES))).astype(np.int8)

    runs, broods = {}, []

    def recorded(fitness: MarginalFitness):
        def score(brood):
            broods.append(brood)
            return fitness(brood)
        return score

    for mode in ("incremental", "full"):
        fitness = MarginalFitness(marginals, target, incremental=mode == "incremental")
        search = _search(start, children)
        population_minimize(fitness, search, generations=1)  # generation 0: the start
        begin = time.perf_counter()
        result = population_minimize(recorded(fitness) if mode == "incremental" else fitness,
                                     search, generations=generations)
        runs[mode] = {"seconds": time.perf_counter() - begin, "best": float(result.fun)}
    assert runs["incremental"]["best"] == runs["full"]["best"], "the two objectives disagree"

    seconds: dict[str, list[float]] = {"incremental": [], "full": []}
    for _ in range(REPS):  # interleaved, best of REPS each (the machine may be shared)
        for mode in seconds:
            fitness = MarginalFitness(marginals, target, incremental=mode == "incremental")
            begin = time.perf_counter()
            for brood in broods:
                for child in brood.children:
                    child.stats = None
                fitness(brood)
            seconds[mode].append(time.perf_counter() - begin)
    scored = {mode: len(broods) * children / min(s) for mode, s in seconds.items()}

    gens = {mode: generations / r["seconds"] for mode, r in runs.items()}
    return {
        "rows": ROWS, "columns": len(SIZES), "pairs": len(marginals.a),
        "cells": marginals.cells, "children_per_generation": children,
        "generations": generations,
        "children_per_s": {k: round(v) for k, v in scored.items()},
        "fitness_speedup": round(scored["incremental"] / scored["full"], 1),
        "generations_per_s": {k: round(v, 1) for k, v in gens.items()},
        "generation_speedup": round(gens["incremental"] / gens["full"], 1),
        "best_loss": runs["incremental"]["best"],
        "load_1min": round(os.getloadavg()[0], 2),
    }


def report(r: dict) -> None:
    """Print ``run``'s figures."""
    c, g = r["children_per_s"], r["generations_per_s"]
    print(f"incremental vs full fitness, {r['rows']} rows x {r['columns']} columns, 2-way "
          f"marginals ({r['cells']} cells), {r['children_per_generation']} one-row children per "
          f"generation: {c['incremental']} vs {c['full']} children/s -> "
          f"{r['fitness_speedup']:.1f}x (target >= 20x); whole generations "
          f"{g['incremental']} vs {g['full']} per s -> {r['generation_speedup']:.1f}x "
          f"(load {r['load_1min']})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 generations (smoke run)")
    parser.add_argument("--out", type=Path, default=None, help="write results.json here")
    args = parser.parse_args()
    result = run(args.quick)
    report(result)
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "engine_population.json").write_text(json.dumps(result, indent=2))
    print("reproduce: python bench/engine_population.py" + (" --quick" if args.quick else ""))


if __name__ == "__main__":
    main()
