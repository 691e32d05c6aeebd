"""``bbzo.minimize`` against pycma, nevergrad and scipy at equal query budgets, side by side.

Suite (``bbzo.blackbox.zo.problems``), each at d ∈ {10, 100, 1,000, 10,000}:
ill-conditioned quadratic (condition 10³, rotated; DCT rotation from d = 1,000), chained
Rosenbrock, logistic regression (synthetic, ill-conditioned design, 200 samples), and a noisy
quadratic (condition 10, Gaussian noise of σ = 10⁻³·f(x0) on every value; every method gets
the same noise stream).

Budgets (queries per problem, the same for every method): 4,000 at d = 10, 20,000 at
d = 100, 40,000 at d = 1,000 (40 per dimension), 20,000 at d = 10,000 (2 per dimension:
a query costs ~1 ms of CPU there, the slowest peer, NGOpt, ~3 ms, and the runs had to fit a
shared two-core machine).

Methods:
- ``bbzo default``: ``bbzo.minimize(fun, x0, budget=B)``;
- ``bbzo auto``: ``method="auto"`` (the method it chose is printed);
- ``zo sweep``: the best ZO-SGD run over q × step size (automatic and fixed), for the
  "default within 10× of the best ZO-SGD setting" check (a smaller grid at d = 10,000);
- ``pycma``: ``cma.CMAEvolutionStrategy`` ask/tell, default population, σ0 = 0.3·max(1, ‖x0‖∞);
  full covariance up to d = 1,000, separable (``CMA_diagonal``) at d = 10,000 (a 10⁴ × 10⁴
  covariance is 800 MB and each eigendecomposition takes minutes);
- ``NGOpt``: nevergrad's ``NGOpt`` ask/tell, one point at a time;
- ``Powell``, ``Nelder-Mead``: ``scipy.optimize.minimize`` with ``maxfev`` and a hard stop at
  the budget; both skipped at d = 10,000 (their d × d direction set / (d + 1) × d simplex is
  800 MB, and 2 queries per dimension do not finish one sweep of Powell's line searches).

Every run stops at the budget or at ``--time-cap`` seconds of CPU time (of this process, so
that a loaded machine does not change the results), whichever comes first; a capped run is
reported with the queries it had spent (its gap is of the point it reached).

Reported per cell: the relative gap (f(x) − f*)/(f(x0) − f*), noise-free, of the point each
method returns, and queries per second (wall time of the whole run; the packages are imported
before any timing). Each finished run is appended to ``OUT/peers.jsonl`` at once; the tables
are built from that file (a later record of the same cell replaces an earlier one), so
``--methods``/``--problems`` re-run single cells.

    python bench/peers.py [--quick] [--dims 10 100 1000 10000] [--methods ...]
                          [--problems ...] [--time-cap 300] [--out bench/out] [--fresh]

(``bench/`` comes first on ``sys.path``: ``bbzo`` is the installed one; for an uninstalled
checkout or another worktree run it with ``PYTHONPATH=.``.) ``--quick`` runs d ∈ {10, 100} at
small budgets and a smaller sweep (about a minute on an idle
core).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import bbzo
from bbzo.blackbox.zo import RGE
from bbzo.blackbox.zo.problems import Problem, logistic_regression, noisy, quadratic, rosenbrock
from bbzo.errors import BbzoError

BUDGETS = {10: 4_000, 100: 20_000, 1_000: 40_000, 10_000: 20_000}
QUICK_BUDGETS = {10: 1_000, 100: 3_000}
SWEEP = {"full": ((2, 8, 32, 128), (None, 1e-4, 1e-3, 1e-2)),
         "large": ((8, 32, 128), (None,)),  # d = 10,000: a run costs ~15 s of CPU
         "quick": ((4, 32), (None, 1e-3))}
TIME_CAP_S = 300.0
# Gaps below this count as equal in the ratios (rounding of f, and of f* for logistic
# regression, which comes from L-BFGS).
FLOOR = 1e-12
SKIPPED = {
    ("Powell", 10_000): "d x d direction set (800 MB); 2 queries/dim do not finish one sweep",
    ("Nelder-Mead", 10_000): "(d+1) x d simplex (800 MB); its first simplex alone is 10,001 "
                             "queries",
}


def suite(d: int) -> list[Callable[[], Problem]]:
    """The four problems at dimension d, as factories: each run gets a fresh noise stream."""
    rotation = "dense" if d < 1000 else "fast"
    base = quadratic(d, cond=10.0, seed=1, rotation=rotation)
    sigma = 1e-3 * base.value(base.x0)
    fixed = [quadratic(d, cond=1e3, rotation=rotation), rosenbrock(d), logistic_regression(d=d)]
    return [*(lambda p=p: p for p in fixed), lambda: noisy(base, sigma, seed=2)]


class Budgeted:
    """A one-point objective for the peers: counts queries, keeps the best measured point, and
    stops the peer (``Spent``) on the query after the budget or after the time cap."""

    class Spent(Exception):
        pass

    def __init__(self, fun: Callable[[np.ndarray], np.ndarray], budget: int,
                 deadline: float) -> None:
        self.fun, self.budget, self.deadline, self.nqueries = fun, budget, deadline, 0
        self.best_x, self.best_f = None, math.inf

    def batch(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if self.nqueries + len(X) > self.budget or time.process_time() > self.deadline:
            raise Budgeted.Spent
        self.nqueries += len(X)
        y = self.fun(X)
        i = int(np.argmin(y))
        if y[i] < self.best_f:
            self.best_x, self.best_f = X[i].copy(), float(y[i])
        return y

    def __call__(self, x: np.ndarray) -> float:
        return float(self.batch(x[None])[0])


# A run: (problem, budget, seed, deadline) -> (x, queries spent, bbzo's method or None).
Run = Callable[[Problem, int, int, float], tuple[np.ndarray, int, str | None]]


def run_pycma(p: Problem, budget: int, seed: int, deadline: float):
    import cma

    f = Budgeted(p.fun, budget, deadline)
    sigma0 = 0.3 * max(1.0, float(np.abs(p.x0).max()))
    es = cma.CMAEvolutionStrategy(p.x0, sigma0, {"seed": seed + 1, "verbose": -9,
                                                 "CMA_diagonal": p.dim > 1000})
    try:
        while not es.stop():
            X = es.ask()
            es.tell(X, f.batch(np.array(X)).tolist())
    except Budgeted.Spent:
        pass
    return f.best_x, f.nqueries, None


def run_ngopt(p: Problem, budget: int, seed: int, deadline: float):
    import nevergrad as ng

    f = Budgeted(p.fun, budget, deadline)
    param = ng.p.Array(init=p.x0.copy())
    param.random_state.seed(seed)
    opt = ng.optimizers.NGOpt(parametrization=param, budget=budget, num_workers=1)
    try:
        for _ in range(budget):
            cand = opt.ask()
            opt.tell(cand, f(cand.value))
    except Budgeted.Spent:
        pass
    return opt.provide_recommendation().value, f.nqueries, None


def run_scipy(method: str) -> Run:
    def run(p: Problem, budget: int, seed: int, deadline: float):
        from scipy.optimize import minimize as scipy_minimize

        f = Budgeted(p.fun, budget, deadline)
        try:
            res = scipy_minimize(f, p.x0, method=method, options={"maxfev": budget})
            x = res.x if f.best_x is None or p.value(res.x) <= f.best_f else f.best_x
        except Budgeted.Spent:
            x = f.best_x
        return x, f.nqueries, None
    return run


def run_bbzo(**kwargs) -> Run:
    def run(p: Problem, budget: int, seed: int, deadline: float):
        res = bbzo.minimize(p.fun, p.x0, budget=budget, seed=seed,
                            callback=lambda _: time.process_time() > deadline, **kwargs)
        return res.x, res.nqueries, res.method
    return run


PEERS: dict[str, Run] = {
    "bbzo default": run_bbzo(),
    "bbzo auto": run_bbzo(method="auto"),
    "pycma": run_pycma,
    "NGOpt": run_ngopt,
    "Powell": run_scipy("Powell"),
    "Nelder-Mead": run_scipy("Nelder-Mead"),
}
METHODS = [*PEERS, "zo sweep"]


def sweep(p: Callable[[], Problem], budget: int, seed: int, grid: str, cap: float) -> dict:
    """Best relative gap of ZO-SGD over q × lr (a diverging setting counts as gap 1)."""
    best, setting, start = math.inf, "", time.perf_counter()
    qs, lrs = SWEEP[grid]
    for q in qs:
        for lr in lrs:
            problem = p()
            try:
                x, _, _ = run_bbzo(estimator=RGE(q=min(q, 2 * problem.dim)), lr=lr)(
                    problem, budget, seed, time.process_time() + cap)
                gap = problem.relative_gap(x)
            except BbzoError:
                gap = 1.0
            if gap < best:
                best, setting = gap, f"q={q},lr={'auto' if lr is None else lr}"
    return {"gap": best, "setting": setting, "wall_s": time.perf_counter() - start}


def run_method(name: str, p: Callable[[], Problem], d: int, budget: int, seed: int,
               cap: float, grid: str) -> dict:
    """One method on one problem: a record for ``peers.jsonl``."""
    problem = p()
    record = {"problem": problem.name, "d": d, "budget": budget, "method": name}
    if (name, d) in SKIPPED:
        return record | {"skipped": SKIPPED[name, d]}
    if name == "zo sweep":
        return record | sweep(p, budget, seed, grid, cap)
    start, cpu = time.perf_counter(), time.process_time()
    x, spent, chosen = PEERS[name](problem, budget, seed, cpu + cap)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    record |= {"gap": problem.relative_gap(x), "queries": spent, "wall_s": wall, "cpu_s": cpu,
               "qps": spent / wall, "qps_cpu": spent / cpu}
    if chosen is not None:
        record["chosen"] = chosen
    if spent < budget and cpu > cap:
        record["capped"] = f"CPU-time cap {cap:g} s after {spent} queries"
    if name == "pycma" and d > 1000:
        record["chosen"] = "sep (CMA_diagonal)"
    return record


def load(path: Path) -> dict[tuple[str, str], dict]:
    """The records of ``peers.jsonl`` by (problem, method); later records win."""
    cells: dict[tuple[str, str], dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            cells[r["problem"], r["method"]] = r
    return cells


def _gap(r: dict | None) -> float | None:
    return None if r is None or "gap" not in r else r["gap"]


def report(cells: dict[tuple[str, str], dict]) -> None:
    problems = list(dict.fromkeys(p for p, _ in cells))
    print(f"\nrelative gap (f(x) - f*)/(f(x0) - f*), noise-free, at equal query budgets "
          f"(ratios count gaps below {FLOOR:g} as {FLOOR:g}; * = stopped by the time cap):")
    print("| problem | budget | " + " | ".join(METHODS) + " | auto ran | auto/best peer |")
    print("|" + " --- |" * (len(METHODS) + 4))
    notes = []
    for prob in problems:
        row = {m: cells.get((prob, m)) for m in METHODS}
        budget = next(r["budget"] for r in row.values() if r)
        cell_text = []
        for m, r in row.items():
            if r is None:
                cell_text.append("")
            elif "skipped" in r:
                cell_text.append("skipped")
                notes.append(f"{prob} {m}: skipped, {r['skipped']}")
            else:
                cell_text.append(f"{r['gap']:.1e}" + ("*" if "capped" in r else ""))
                if "capped" in r:
                    notes.append(f"{prob} {m}: {r['capped']}")
        peers = [g for m in ("pycma", "NGOpt", "Powell", "Nelder-Mead")
                 if (g := _gap(row[m])) is not None]
        auto = _gap(row["bbzo auto"])
        ratio = (f"{max(auto, FLOOR) / max(min(peers), FLOOR):.2g}"
                 if auto is not None and peers else "")
        chosen = (row["bbzo auto"] or {}).get("chosen", "")
        print(f"| {prob} | {budget} | " + " | ".join(cell_text) + f" | {chosen} | {ratio} |")
    for note in notes:
        print(f"  {note}")
    print("\nqueries per second of wall time / of CPU time (whole run):")
    print("| problem | " + " | ".join(PEERS) + " |")
    print("|" + " --- |" * (len(PEERS) + 1))
    for prob in problems:
        rates = [cells.get((prob, m), {}) for m in PEERS]
        print(f"| {prob} | " + " | ".join(
            f"{r['qps']:.3g} / {r.get('qps_cpu', math.nan):.3g}" if "qps" in r else ""
            for r in rates) + " |")
    print("\nZO-SGD sweep (best q, lr) and default / best-sweep gap ratio:")
    for prob in problems:
        default, swept = _gap(cells.get((prob, "bbzo default"))), cells.get((prob, "zo sweep"))
        if default is not None and swept is not None:
            ratio = max(default, FLOOR) / max(swept["gap"], FLOOR)
            print(f"  {prob}: {swept['setting']}  default/sweep = {ratio:.2g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="d in {10, 100}, small budgets")
    parser.add_argument("--dims", type=int, nargs="+", help="dimensions to run (default: all)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="default: all")
    parser.add_argument("--problems", nargs="+", type=int, choices=range(4),
                        help="indices into the suite: 0 quadratic, 1 Rosenbrock, 2 logistic, "
                             "3 noisy (default: all)")
    parser.add_argument("--time-cap", type=float, default=TIME_CAP_S,
                        help="seconds of CPU time per run (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/out")
    parser.add_argument("--fresh", action="store_true", help="start a new peers.jsonl")
    args = parser.parse_args()
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    dims = args.dims or list(budgets)
    unknown = [d for d in dims if d not in budgets]
    if unknown:
        parser.error(f"--dims must be among {sorted(budgets)}, got {unknown}")
    import cma  # noqa: F401  (imported before any timing: importing takes seconds)
    import nevergrad  # noqa: F401
    import scipy.optimize  # noqa: F401

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("peers-quick.jsonl" if args.quick else "peers.jsonl")
    if args.fresh:
        path.unlink(missing_ok=True)
    start, load_start = time.perf_counter(), os.getloadavg()
    for d in dims:
        grid = "quick" if args.quick else "large" if d >= 10_000 else "full"
        problems = suite(d)
        for i in args.problems if args.problems is not None else range(len(problems)):
            for name in args.methods or METHODS:
                record = run_method(name, problems[i], d, budgets[d], args.seed,
                                    args.time_cap, grid)
                record["load"] = os.getloadavg()[0]
                with path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                print(json.dumps(record), flush=True)
    report(load(path))
    print(f"\nwall time {time.perf_counter() - start:.0f} s; load average (1 min) "
          f"{load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
          f"records in {path}")


if __name__ == "__main__":
    main()
