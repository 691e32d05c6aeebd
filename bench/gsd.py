"""Private-GSD benchmark on adult (``../shared/data/adult``, 48,842 rows, 14 columns).

1. Speed: generations per second of the GA (the engine's ``PopulationSearch``, 100 children,
   elite 5) on all 91 two-way marginals, with the incremental fitness (each child scored from
   its parent's counts and the changed cell) against a full recount of every child, at
   N′ = 2,000 and 32,000 rows; and their ratio.
2. Error: max and mean absolute error on 2-way and 3-way marginals and prefix queries of
   ``PrivateGSD`` (oneshot, fitting ``--queries``, default 2way; the rest held out) at
   ε ∈ {0.1, 0.5, 1.0}, δ = 1/N², against the independent-marginals baseline (every 1-way
   marginal measured with the whole budget, columns sampled independently). The errors are
   measured on the true data (not private: a benchmark).

    python bench/gsd.py [--quick] [--rows 2000] [--generations 200000] [--seeds 0 1 2]
                        [--queries 2way] [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bbzo.blackbox.zo.population import Brood, PopulationSearch, population_minimize
from bbzo.privacy.gsd.accounting import PrivacyLedger, rho_from_epsilon
from bbzo.privacy.gsd.domain import Domain
from bbzo.privacy.gsd.evaluate import marginal_errors
from bbzo.privacy.gsd.ga import QueryFitness, code_dtype, one_cell_crossover, one_cell_mutation
from bbzo.privacy.gsd.mechanisms import gaussian_measure
from bbzo.privacy.gsd.queries import Marginals, class_workloads, marginal_sensitivity
from bbzo.privacy.gsd.synthesizer import PrivateGSD

ADULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "adult"
EPSILONS = (0.1, 0.5, 1.0)
CLASSES = ("2way", "3way", "prefix")  # errors reported; those not in --queries are held out


def full_recount(fitness: QueryFitness):
    """The same objective scoring every child by a full count of its table."""

    def score(brood: Brood) -> np.ndarray:
        return np.array([fitness.full(c) for c in brood.children])

    return score


def generations_per_second(domain: Domain, codes: np.ndarray, rows: int, generations: int,
                           incremental: bool) -> float:
    marginals = Marginals(domain.sizes, class_workloads(len(domain), "2way"))
    fitness = QueryFitness(marginals, marginals.answers(codes), rows)
    start = np.random.default_rng(0).integers(0, domain.sizes, (rows, len(domain)))
    search = PopulationSearch([start.astype(code_dtype(domain.sizes))],
                              mutate=one_cell_mutation(domain.sizes),
                              crossover=one_cell_crossover, elite_size=5, children=100, seed=0)
    objective = fitness if incremental else full_recount(fitness)
    population_minimize(objective, search, generations=1)  # generation 0: the initial table
    began = time.perf_counter()
    population_minimize(objective, search, generations=generations)
    return generations / (time.perf_counter() - began)


def independent_baseline(domain: Domain, codes: np.ndarray, epsilon: float, rows: int,
                         seed: int) -> np.ndarray:
    """Columns sampled independently from Gaussian-noised 1-way marginals (ρ/m each)."""
    n = len(codes)
    rho = rho_from_epsilon(epsilon, 1.0 / n ** 2)
    ledger, rng = PrivacyLedger(rho), np.random.default_rng(seed)
    columns = []
    for j, name in enumerate(domain.names):
        one = Marginals(domain.sizes, [(j,)])
        noisy = gaussian_measure(one.answers(codes), sensitivity=marginal_sensitivity(n),
                                 rho=rho / len(domain), ledger=ledger, workload=name, rng=rng)
        p = np.clip(noisy, 0.0, None)
        p = p / p.sum() if p.sum() > 0 else np.full(p.size, 1.0 / p.size)
        columns.append(rng.choice(p.size, size=rows, p=p))
    return np.stack(columns, axis=1)


def run(quick: bool, rows: int, generations: int, seeds: list[int], queries: str) -> dict:
    domain = Domain.from_file(ADULT / "adult-domain.json")
    codes = domain.encode(ADULT / "adult.csv")
    speed = []
    for n in (2000, 32000):
        inc = generations_per_second(domain, codes, n, 20 if quick else 500, True)
        full = generations_per_second(domain, codes, n, 1 if quick else 5, False)
        speed.append({"rows": n, "incremental_gen_per_s": inc, "full_gen_per_s": full,
                      "ratio": inc / full})
    errors = []
    for eps in EPSILONS:
        for seed in seeds:
            began = time.perf_counter()
            gsd = PrivateGSD(eps, queries=queries, rows=rows, generations=generations,
                             seed=seed)
            gsd.fit(codes, domain)
            seconds = time.perf_counter() - began
            base = independent_baseline(domain, codes, eps, rows, seed)
            record = {"epsilon": eps, "seed": seed, "seconds": seconds,
                      "generations": gsd.summary_["generations"]}
            for name, table in (("gsd", gsd.synthetic_), ("independent", base)):
                for q, err in marginal_errors(domain.sizes, codes, table, CLASSES).items():
                    record.update({f"{name}_{q}_max": err["max"], f"{name}_{q}_mean": err["mean"]})
            errors.append(record)
    return {"speed": speed, "errors": errors, "rows": rows, "generations": generations,
            "queries": queries}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 20 generations for speed, 300 for error, seed 0")
    parser.add_argument("--rows", type=int, default=2000, help="synthetic rows N'")
    parser.add_argument("--generations", type=int, default=200000, help="GA generations cap")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--queries", default="2way", help="classes GSD fits, e.g. 2way,prefix")
    parser.add_argument("--out", type=Path, default=None, help="write results.json here")
    args = parser.parse_args()
    generations, seeds = (300, [0]) if args.quick else (args.generations, args.seeds)
    result = run(args.quick, args.rows, generations, seeds, args.queries)
    for s in result["speed"]:
        print(f"N'={s['rows']:>6}: incremental {s['incremental_gen_per_s']:8.1f} gen/s, full "
              f"{s['full_gen_per_s']:8.3f} gen/s, ratio {s['ratio']:7.1f}x")
    for e in result["errors"]:
        cells = " | ".join(f"{q} max GSD {e[f'gsd_{q}_max']:.4f} indep "
                           f"{e[f'independent_{q}_max']:.4f}" for q in CLASSES)
        print(f"eps={e['epsilon']:<4} seed={e['seed']} ({e['generations']} gen, "
              f"{e['seconds']:.1f} s): {cells}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gsd.json").write_text(json.dumps(result, indent=2))
    print("reproduce: python bench/gsd.py" + (" --quick" if args.quick else ""))


if __name__ == "__main__":
    main()
