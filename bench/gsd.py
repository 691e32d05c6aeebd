"""Private-GSD benchmark on adult (``../shared/data/adult``, 48,842 rows, 14 columns).

1. Speed (``--parts speed``): generations per second of the GA (the engine's
   ``PopulationSearch``, 100 children, elite 5) on all 91 two-way marginals, with the
   incremental fitness (each child scored from its parent's counts and the changed cell)
   against a full recount of every child, at N′ = 2,000 and 32,000 rows; and their ratio.
2. Comparison (``--parts compare``), at ε ∈ {0.1, 0.5, 1.0}, δ = 1/N², for each seed, side by
   side, max and mean absolute error on 2-way and 3-way marginals and prefix queries (and
   halfspaces when bbzo has that query class; ``_workload_max``: the mean over workloads of
   each one's largest error), wall and CPU seconds per run, of:

   * ``gsd``: ``PrivateGSD`` oneshot fitting ``--queries`` (default 2way; the rest held out);
   * ``independent``: every 1-way marginal measured with the whole budget, columns sampled
     independently (the floor);
   * ``mst``, ``aim``: SmartNoise's ``Synthesizer.create("mst" | "aim", epsilon, delta)`` as its
     users run it (AIM with ``max_model_size=--aim-model-size``), in a subprocess of the peer
     interpreter (``bench/gsd_peers_runner.py``);
   * ``gsd_equal_time``: ``gsd`` given MST's seconds (its generations = the ``gsd`` run's
     generations per second × MST's wall seconds, or CPU seconds with
     ``--equal-time cpu``);
   * ``gsd_prefix`` (and ``gsd_halfspace``): GSD fitting 2-way marginals and the
     non-differentiable prefix (halfspace) queries, the workload where GSD should win.

   With ``--ml-target COLUMN`` each table's ML efficacy too (``ml_efficacy``: train on the
   table, test on held-out true rows, against train on true rows).

   Results are appended to ``<out>/gsd_runs.jsonl`` as each run ends; a rerun with the same
   ``--out`` skips the runs already there (``--fresh`` starts over; MST/AIM tables are kept
   in ``<out>/tables``). ``--stop-after S`` starts no new run after S seconds. The summary
   (mean ± sd over seeds) goes to ``<out>/gsd.json``, ``<out>/gsd.png`` and stdout. Errors
   are measured on the true data (not private: a benchmark).

Peers: SmartNoise (``smartnoise-synth``) pins ``opendp`` 0.14 and ``mbi`` 1.1, older than
what bbzo's tests use, so install it into its own environment and point ``--peer-python`` at
it (default: this interpreter if ``snsynth`` imports here)::

    python3 -m venv /work/snv && /work/snv/bin/pip install smartnoise-synth pandas
    python bench/gsd.py --peer-python /work/snv/bin/python

Without a peer interpreter the MST/AIM rows are reported as missing, not crashed.

    python bench/gsd.py [--quick] [--parts speed,compare] [--rows 2000] [--generations 20000]
                        [--seeds 0 1 2] [--methods gsd,independent,mst,aim,...]
                        [--peer-python PATH] [--out bench/out/gsd]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bbzo.blackbox.zo.population import Brood, PopulationSearch, population_minimize
from bbzo.errors import InputError
from bbzo.privacy.gsd.accounting import PrivacyLedger, rho_from_epsilon
from bbzo.privacy.gsd.domain import Domain
from bbzo.privacy.gsd.evaluate import ErrorMeter, ml_efficacy
from bbzo.privacy.gsd.ga import QueryFitness, code_dtype, one_cell_crossover, one_cell_mutation
from bbzo.privacy.gsd.mechanisms import gaussian_measure
from bbzo.privacy.gsd.queries import (
    QUERY_CLASSES,
    Marginals,
    class_workloads,
    marginal_sensitivity,
)
from bbzo.privacy.gsd.synthesizer import PrivateGSD

ADULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "adult"
RUNNER = Path(__file__).resolve().with_name("gsd_peers_runner.py")
EPSILONS = (0.1, 0.5, 1.0)
METHODS = ("gsd", "independent", "mst", "aim", "gsd_equal_time", "gsd_prefix", "gsd_halfspace")
RUNS_FILE = "gsd_runs.jsonl"
HALFSPACE = "halfspace"


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


def speed(domain: Domain, codes: np.ndarray, quick: bool) -> list[dict[str, float]]:
    out = []
    for n in (2000, 32000):
        inc = generations_per_second(domain, codes, n, 20 if quick else 500, True)
        full = generations_per_second(domain, codes, n, 1 if quick else 5, False)
        out.append({"rows": n, "incremental_gen_per_s": inc, "full_gen_per_s": full,
                    "ratio": inc / full})
    return out


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


def timed(fit: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fit()``'s value with its wall and CPU seconds."""
    began, cpu = time.perf_counter(), time.process_time()
    value = fit()
    return value, time.perf_counter() - began, time.process_time() - cpu


def run_peer(python: str, method: str, epsilon: float, delta: float, seed: int, rows: int,
             model_size: float, timeout: float, domain: Domain,
             keep: Path) -> tuple[np.ndarray, dict]:
    """A SmartNoise synthesizer's table (as codes) and its timing, from the peer runner; the
    table is kept as ``keep`` (CSV) for inspection."""
    spec = {"method": method, "data": str(ADULT / "adult.csv"), "epsilon": epsilon,
            "delta": delta, "seed": seed, "rows": rows, "max_model_size": model_size,
            "out": str(keep)}
    keep.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([python, str(RUNNER), json.dumps(spec)], capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{method} runner failed (exit {done.returncode}): {tail}")
    timing = json.loads(done.stdout.strip().splitlines()[-1])
    return domain.encode(keep), timing


def error_classes() -> tuple[str, ...]:
    """Query classes whose errors are reported: halfspaces only where bbzo has them."""
    return ("2way", "3way", "prefix") + ((HALFSPACE,) if HALFSPACE in QUERY_CLASSES else ())


class Bench:
    """The comparison's runs, one (method, ε, seed) at a time, appended to ``RUNS_FILE``."""

    def __init__(self, args: argparse.Namespace, domain: Domain, codes: np.ndarray) -> None:
        self.args, self.domain, self.codes = args, domain, codes
        self.delta = 1.0 / len(codes) ** 2
        self.path = args.out / RUNS_FILE
        self.records = [] if not self.path.exists() else [
            json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        self.began = time.perf_counter()

    @functools.cached_property
    def meter(self) -> ErrorMeter:
        """The true data's answers, computed at the first run that needs them."""
        return ErrorMeter(self.domain.sizes, self.codes, error_classes())

    def find(self, method: str, epsilon: float, seed: int) -> dict | None:
        return next((r for r in self.records if (r["method"], r["epsilon"], r["seed"])
                     == (method, epsilon, seed)), None)

    def run(self, method: str, epsilon: float, seed: int) -> None:
        """Run one (method, ε, seed) unless it is recorded; a failure is kept for the summary
        but not written, so a rerun tries again."""
        if self.find(method, epsilon, seed) is not None:
            return
        if self.args.stop_after is not None \
                and time.perf_counter() - self.began >= self.args.stop_after:
            return
        record: dict[str, Any] = {"method": method, "epsilon": epsilon, "seed": seed}
        try:
            table, timing = self.fit(method, epsilon, seed)
            record.update(timing)
            for name, err in self.meter(table).items():
                record.update({f"{name}_max": err["max"], f"{name}_mean": err["mean"],
                               f"{name}_workload_max": err["mean_workload_max"]})
            if self.args.ml_target is not None:
                ml = ml_efficacy(self.domain.sizes, self.codes, table,
                                 self.domain.names.index(self.args.ml_target), seed=seed)
                record.update({f"ml_{k}": v for k, v in ml["synthetic"].items()})
                record.update({f"ml_{k}_ratio": v for k, v in ml["ratio"].items()})
        except (RuntimeError, InputError, subprocess.TimeoutExpired, OSError) as error:
            record["error"] = " ".join(str(error).split())[:300]
        print(f"  {method:<15} eps={epsilon:<4} seed={seed}: "
              + (record.get("error") or f"2way max {record['2way_max']:.4f}, "
                 f"{record['seconds']:.1f} s wall, {record['cpu_seconds']:.1f} s CPU"),
              flush=True)
        self.records.append(record)
        if "error" not in record:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def fit(self, method: str, epsilon: float, seed: int) -> tuple[np.ndarray, dict]:
        args = self.args
        if method in ("mst", "aim"):
            if args.peer_python is None:
                raise RuntimeError("no peer interpreter: snsynth does not import here; set up "
                                   "one (see the docstring) and pass --peer-python")
            return run_peer(args.peer_python, method, epsilon, self.delta, seed,
                            args.peer_rows or len(self.codes), args.aim_model_size,
                            args.peer_timeout, self.domain,
                            args.out / "tables" / f"{method}-eps{epsilon:g}-seed{seed}.csv")
        if method == "independent":
            table, wall, cpu = timed(lambda: independent_baseline(
                self.domain, self.codes, epsilon, args.rows, seed))
            return table, {"seconds": wall, "cpu_seconds": cpu}
        queries, generations = args.queries, args.generations
        if method == "gsd_prefix":
            queries = "2way,prefix"
        elif method == "gsd_halfspace":
            if HALFSPACE not in QUERY_CLASSES:
                raise RuntimeError("bbzo has no halfspace query class yet")
            queries = f"2way,{HALFSPACE}"
        elif method == "gsd_equal_time":
            generations = self.equal_time_generations(epsilon, seed)
        gsd = PrivateGSD(epsilon, queries=queries, rows=args.rows, generations=generations,
                         seed=seed)
        fitted, wall, cpu = timed(lambda: gsd.fit(self.codes, self.domain))
        return fitted.synthetic_, {"seconds": wall, "cpu_seconds": cpu,
                                   "generations": fitted.summary_["generations"]}

    def equal_time_generations(self, epsilon: float, seed: int) -> int:
        """Generations that take GSD about MST's seconds at (ε, seed), from the ``gsd`` run's
        rate (wall or CPU per ``--equal-time``)."""
        gsd, mst = self.find("gsd", epsilon, seed), self.find("mst", epsilon, seed)
        if gsd is None or mst is None or "error" in gsd or "error" in mst:
            raise RuntimeError("equal time needs the gsd and mst runs at this epsilon and seed")
        key = "seconds" if self.args.equal_time == "wall" else "cpu_seconds"
        return max(1, int(gsd["generations"] / gsd[key] * mst[key]))


def summarise(records: list[dict], methods: list[str]) -> list[dict]:
    """Mean and sd over seeds of every number, per (method, ε); failures counted."""
    rows = []
    for method in methods:
        for epsilon in EPSILONS:
            mine = [r for r in records if (r["method"], r["epsilon"]) == (method, epsilon)]
            good = [r for r in mine if "error" not in r]
            row: dict[str, Any] = {"method": method, "epsilon": epsilon,
                                   "seeds": sorted(r["seed"] for r in good),
                                   "failures": [r["error"] for r in mine if "error" in r]}
            keys = sorted({k for r in good for k, v in r.items()
                           if isinstance(v, float) and k != "epsilon"})
            for key in keys:
                values = [r[key] for r in good if key in r]
                row[key] = {"mean": float(np.mean(values)), "sd": float(np.std(values))}
            rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    columns = [f"{c}_{s}" for c in error_classes() for s in ("max", "mean")]
    columns += [f"{c}_workload_max" for c in ("2way", "3way")] + ["seconds", "cpu_seconds"]
    columns += [c for c in ("ml_accuracy_ratio", "ml_balanced_accuracy_ratio")
                if any(c in r for r in rows)]
    print(f"{'method':<15} {'eps':>4} {'n':>2} " + " ".join(f"{c:>17}" for c in columns))
    for row in rows:
        if not row["seeds"]:
            why = row["failures"][0] if row["failures"] else "not run"
            print(f"{row['method']:<15} {row['epsilon']:>4} {0:>2} {why}")
            continue
        cells = " ".join(f"{row[c]['mean']:>9.3g}±{row[c]['sd']:<7.2g}" if c in row
                         else f"{'-':>17}" for c in columns)
        print(f"{row['method']:<15} {row['epsilon']:>4} {len(row['seeds']):>2} {cells}")


def plot(rows: list[dict], path: Path) -> None:
    """Max error vs ε per method: one panel per query class, mean ± sd over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    classes = error_classes()
    fig, axes = plt.subplots(1, len(classes), figsize=(4.5 * len(classes), 4), squeeze=False)
    for ax, name in zip(axes[0], classes, strict=True):
        for method in dict.fromkeys(r["method"] for r in rows):
            mine = [r for r in rows if r["method"] == method and f"{name}_max" in r]
            if mine:
                ax.errorbar([r["epsilon"] for r in mine],
                            [r[f"{name}_max"]["mean"] for r in mine],
                            yerr=[r[f"{name}_max"]["sd"] for r in mine], fmt="-o", capsize=3,
                            label=method)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("privacy ε (δ = 1/N²)")
        ax.set_title(f"{name}: max absolute error")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("adult: Private-GSD against MST, AIM and independent marginals")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def default_peer_python() -> str | None:
    return sys.executable if importlib.util.find_spec("snsynth") else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: speed at 20 generations; compare at ε = 1, seed 0, "
                             "300 generations, 2,000 peer rows")
    parser.add_argument("--parts", default="speed,compare", help="speed, compare or both")
    parser.add_argument("--rows", type=int, default=2000, help="GSD's synthetic rows N'")
    parser.add_argument("--generations", type=int, default=20000, help="GSD generations cap")
    parser.add_argument("--queries", default="2way", help="classes gsd fits, e.g. 2way,3way")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epsilons", type=float, nargs="+", default=list(EPSILONS),
                        help="privacy budgets compared (each of 0.1, 0.5, 1)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--peer-python", default=default_peer_python(),
                        help="interpreter with smartnoise-synth [default: this one if snsynth "
                             "imports here]")
    parser.add_argument("--peer-rows", type=int, default=None,
                        help="rows MST/AIM sample [default: N, as their users do]")
    parser.add_argument("--aim-model-size", type=float, default=10.0,
                        help="AIM's max_model_size (MB)")
    parser.add_argument("--peer-timeout", type=float, default=1800.0,
                        help="seconds one MST/AIM run may take")
    parser.add_argument("--equal-time", choices=("wall", "cpu"), default="wall",
                        help="the seconds gsd_equal_time matches: MST's wall or CPU seconds")
    parser.add_argument("--ml-target", default=None,
                        help="also measure ML efficacy predicting this column, e.g. income>50K "
                             "(logistic regression trained on each table, tested on 30%% of the "
                             "true rows, against training on the other 70%%)")
    parser.add_argument("--stop-after", type=float, default=None,
                        help="start no new comparison run after this many seconds (0: only "
                             "summarise the recorded runs)")
    parser.add_argument("--fresh", action="store_true", help="forget the recorded runs")
    parser.add_argument("--out", type=Path, default=Path("bench/out/gsd"))
    args = parser.parse_args()
    asked = [m for m in args.methods.split(",") if m]
    unknown = [m for m in asked if m not in METHODS]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    methods = [m for m in METHODS if m in asked]  # mst before gsd_equal_time
    if not set(args.epsilons) <= set(EPSILONS):
        parser.error(f"--epsilons takes values among {', '.join(map(str, EPSILONS))}")
    epsilons, seeds = ((1.0,), [0]) if args.quick else (tuple(args.epsilons), args.seeds)
    if args.quick:
        args.generations, args.peer_rows = 300, args.peer_rows or 2000
    args.out.mkdir(parents=True, exist_ok=True)
    if args.fresh and (args.out / RUNS_FILE).exists():
        (args.out / RUNS_FILE).unlink()
    domain = Domain.from_file(ADULT / "adult-domain.json")
    codes = domain.encode(ADULT / "adult.csv")
    result: dict[str, Any] = {"rows": args.rows, "generations": args.generations,
                              "queries": args.queries, "delta": 1.0 / len(codes) ** 2,
                              "peer_python": args.peer_python, "equal_time": args.equal_time,
                              "aim_max_model_size": args.aim_model_size}
    if "speed" in args.parts:
        result["speed"] = speed(domain, codes, args.quick)
        for s in result["speed"]:
            print(f"N'={s['rows']:>6}: incremental {s['incremental_gen_per_s']:8.1f} gen/s, "
                  f"full {s['full_gen_per_s']:8.3f} gen/s, ratio {s['ratio']:7.1f}x")
    if "compare" in args.parts:
        bench = Bench(args, domain, codes)
        for seed in seeds:  # one (ε, seed) comparison complete before the next; AIM last
            for epsilon in epsilons:
                for method in (m for m in methods if m != "aim"):
                    bench.run(method, epsilon, seed)
        for seed in seeds:
            for epsilon in epsilons:
                if "aim" in methods:
                    bench.run("aim", epsilon, seed)
        runs = [r for r in bench.records if r["epsilon"] in epsilons and r["seed"] in seeds]
        result["runs"], result["summary"] = runs, summarise(runs, methods)
        result["summary"] = [r for r in result["summary"] if r["epsilon"] in epsilons]
        print_table(result["summary"])
        plot(result["summary"], args.out / "gsd.png")
    (args.out / "gsd.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out / 'gsd.json'}"
          + (f" and {args.out / 'gsd.png'}" if "compare" in args.parts else ""))
    print("reproduce: python bench/gsd.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
