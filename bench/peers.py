"""``bbzo.minimize`` against pycma, nevergrad and scipy at equal query budgets, side by side.

Suite (``bbzo.blackbox.zo.problems``), each at d ∈ {10, 100, 1,000, 10,000}:
ill-conditioned quadratic (condition 10³, rotated; DCT rotation from d = 1,000), chained
Rosenbrock, logistic regression (synthetic, ill-conditioned design, 200 samples), and a noisy
quadratic (condition 10, Gaussian noise of σ = 10⁻³·f(x0) on every value).

Methods, each given the same query budget per problem:
- ``bbzo default``: ``bbzo.minimize(fun, x0, budget=B)``;
- ``bbzo auto``: ``method="auto"`` (the method it chose is printed);
- ``zo sweep``: the best ZO-SGD run over q × step size (automatic and fixed), for the
  "default within 10× of the best ZO-SGD setting" check;
- ``pycma``: ``cma.CMAEvolutionStrategy`` ask/tell, default population, σ0 = 0.3·max(1, ‖x0‖∞);
  full covariance up to d = 1,000, separable (``CMA_diagonal``) at d = 10,000 (a 10⁴ × 10⁴
  covariance and its eigendecompositions do not fit the time of this run);
- ``NGOpt``: nevergrad's ``NGOpt`` ask/tell, one point at a time;
- ``Powell``, ``Nelder-Mead``: ``scipy.optimize.minimize`` with ``maxfev`` and a hard stop at
  the budget; skipped from d = 10,000 (Powell, d × d direction set) and d = 1,000
  (Nelder–Mead, whose d + 1-point simplex makes no progress in 40 queries per dimension).

Reported per cell: the relative gap (f(x) − f*)/(f(x0) − f*), noise-free, of the point each
method returns, and queries per second (wall time of the whole run; the packages are imported
before any timing).

    python bench/peers.py [--quick] [--dims 10 100 1000 10000] [--out bench/out]

``--quick`` runs d ∈ {10, 100} at small budgets and a smaller sweep (about a minute on an idle
core).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import bbzo
from bbzo.blackbox.zo import RGE
from bbzo.blackbox.zo.problems import Problem, logistic_regression, noisy, quadratic, rosenbrock
from bbzo.errors import BbzoError

BUDGETS = {10: 4_000, 100: 20_000, 1_000: 40_000, 10_000: 100_000}
QUICK_BUDGETS = {10: 1_000, 100: 3_000}
SWEEP_Q = (2, 8, 32, 128)
SWEEP_LR = (None, 1e-4, 1e-3, 1e-2)
QUICK_SWEEP_Q = (4, 32)
QUICK_SWEEP_LR = (None, 1e-3)
# Gaps below this count as equal in the ratios (rounding of f, and of f* for logistic
# regression, which comes from L-BFGS).
FLOOR = 1e-12


def suite(d: int) -> list[Problem]:
    """The four problems at dimension d."""
    rotation = "dense" if d < 1000 else "fast"
    base = quadratic(d, cond=10.0, seed=1, rotation=rotation)
    sigma = 1e-3 * base.value(base.x0)
    return [quadratic(d, cond=1e3, rotation=rotation), rosenbrock(d),
            logistic_regression(d=d), noisy(base, sigma, seed=2)]


class Budgeted:
    """A one-point objective for the peers: counts queries, keeps the best measured point, and
    stops the peer (``Spent``) on the query after the budget."""

    class Spent(Exception):
        pass

    def __init__(self, fun: Callable[[np.ndarray], np.ndarray], budget: int) -> None:
        self.fun, self.budget, self.nqueries = fun, budget, 0
        self.best_x, self.best_f = None, math.inf

    def batch(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if self.nqueries + len(X) > self.budget:
            raise Budgeted.Spent
        self.nqueries += len(X)
        y = self.fun(X)
        i = int(np.argmin(y))
        if y[i] < self.best_f:
            self.best_x, self.best_f = X[i].copy(), float(y[i])
        return y

    def __call__(self, x: np.ndarray) -> float:
        return float(self.batch(x[None])[0])


def run_pycma(p: Problem, budget: int, seed: int) -> np.ndarray:
    import cma

    f = Budgeted(p.fun, budget)
    sigma0 = 0.3 * max(1.0, float(np.abs(p.x0).max()))
    es = cma.CMAEvolutionStrategy(p.x0, sigma0, {"seed": seed + 1, "verbose": -9,
                                                 "CMA_diagonal": p.dim > 1000})
    try:
        while not es.stop():
            X = es.ask()
            es.tell(X, f.batch(np.array(X)).tolist())
    except Budgeted.Spent:
        pass
    return f.best_x


def run_ngopt(p: Problem, budget: int, seed: int) -> np.ndarray:
    import nevergrad as ng

    param = ng.p.Array(init=p.x0.copy())
    param.random_state.seed(seed)
    opt = ng.optimizers.NGOpt(parametrization=param, budget=budget, num_workers=1)
    for _ in range(budget):
        cand = opt.ask()
        opt.tell(cand, float(p.fun(cand.value[None])[0]))
    return opt.provide_recommendation().value


def run_scipy(method: str) -> Callable[[Problem, int, int], np.ndarray]:
    def run(p: Problem, budget: int, seed: int) -> np.ndarray:
        from scipy.optimize import minimize as scipy_minimize

        f = Budgeted(p.fun, budget)
        try:
            res = scipy_minimize(f, p.x0, method=method, options={"maxfev": budget})
            return res.x if f.best_x is None or p.value(res.x) <= f.best_f else f.best_x
        except Budgeted.Spent:
            return f.best_x
    return run


def run_bbzo(**kwargs) -> Callable[[Problem, int, int], tuple[np.ndarray, str]]:
    def run(p: Problem, budget: int, seed: int) -> tuple[np.ndarray, str]:
        res = bbzo.minimize(p.fun, p.x0, budget=budget, seed=seed, **kwargs)
        return res.x, res.method
    return run


def sweep(p: Problem, budget: int, seed: int, qs, lrs) -> tuple[float, str]:
    """Best relative gap of ZO-SGD over q × lr (a diverging setting counts as gap 1)."""
    best, setting = math.inf, ""
    for q in qs:
        for lr in lrs:
            try:
                res = bbzo.minimize(p.fun, p.x0, budget=budget, seed=seed,
                                    estimator=RGE(q=min(q, 2 * p.dim)), lr=lr)
                gap = p.relative_gap(res.x)
            except BbzoError:
                gap = 1.0
            if gap < best:
                best, setting = gap, f"q={q},lr={'auto' if lr is None else lr}"
    return best, setting


PEERS: dict[str, Callable] = {
    "bbzo default": run_bbzo(),
    "bbzo auto": run_bbzo(method="auto"),
    "pycma": run_pycma,
    "NGOpt": run_ngopt,
    "Powell": run_scipy("Powell"),
    "Nelder-Mead": run_scipy("Nelder-Mead"),
}


def skipped(name: str, d: int) -> bool:
    return (name == "Powell" and d >= 10_000) or (name == "Nelder-Mead" and d >= 1_000)


def bench_cell(p: Problem, budget: int, seed: int, quick: bool) -> dict:
    """Every method on one problem: gap, queries/s, and what auto chose."""
    row: dict = {"problem": p.name, "d": p.dim, "budget": budget, "gap": {}, "qps": {}}
    for name, run in PEERS.items():
        if skipped(name, p.dim):
            continue
        t = time.perf_counter()
        out = run(p, budget, seed)
        wall = time.perf_counter() - t
        if isinstance(out, tuple):
            out, method = out
            row.setdefault("chosen", {})[name] = method
        row["gap"][name] = p.relative_gap(out)
        row["qps"][name] = budget / wall
    t = time.perf_counter()
    qs, lrs = (QUICK_SWEEP_Q, QUICK_SWEEP_LR) if quick else (SWEEP_Q, SWEEP_LR)
    row["gap"]["zo sweep"], row["sweep_best"] = sweep(p, budget, seed, qs, lrs)
    row["sweep_s"] = time.perf_counter() - t
    return row


def report(rows: list[dict]) -> None:
    names = list(PEERS) + ["zo sweep"]
    print(f"\nrelative gap (f(x) - f*)/(f(x0) - f*), noise-free, at equal query budgets "
          f"(ratios count gaps below {FLOOR:g} as {FLOOR:g}):")
    print("| problem | budget | " + " | ".join(names) + " | auto ran | auto/best peer |")
    print("|" + " --- |" * (len(names) + 4))
    for r in rows:
        peers = [v for k, v in r["gap"].items() if not k.startswith("bbzo") and k != "zo sweep"]
        ratio = max(r["gap"]["bbzo auto"], FLOOR) / max(min(peers), FLOOR)
        cells = [f"{r['gap'][n]:.1e}" if n in r["gap"] else "—" for n in names]
        print(f"| {r['problem']} | {r['budget']} | " + " | ".join(cells)
              + f" | {r['chosen']['bbzo auto']} | {ratio:.2g} |")
    print("\nqueries per second (whole run, wall clock):")
    print("| problem | " + " | ".join(PEERS) + " |")
    print("|" + " --- |" * (len(PEERS) + 1))
    for r in rows:
        cells = [f"{r['qps'][n]:.3g}" if n in r["qps"] else "—" for n in PEERS]
        print(f"| {r['problem']} | " + " | ".join(cells) + " |")
    print("\nZO-SGD sweep (best q, lr) and default / best-sweep gap ratio:")
    for r in rows:
        ratio = max(r["gap"]["bbzo default"], FLOOR) / max(r["gap"]["zo sweep"], FLOOR)
        print(f"  {r['problem']}: {r['sweep_best']}  default/sweep = {ratio:.2g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="d in {10, 100}, small budgets")
    parser.add_argument("--dims", type=int, nargs="+", help="dimensions to run (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/out")
    args = parser.parse_args()
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    dims = args.dims or list(budgets)
    unknown = [d for d in dims if d not in budgets]
    if unknown:
        parser.error(f"--dims must be among {sorted(budgets)}, got {unknown}")
    import cma  # noqa: F401  (imported before any timing: importing takes seconds)
    import nevergrad  # noqa: F401
    import scipy.optimize  # noqa: F401

    start, rows = time.perf_counter(), []
    for d in dims:
        for p in suite(d):
            row = bench_cell(p, budgets[d], args.seed, args.quick)
            rows.append(row)
            print(f"{p.name}: " + ", ".join(f"{k} {v:.1e}" for k, v in row["gap"].items()),
                  flush=True)
    report(rows)
    wall = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps({"rows": rows, "wall_s": wall}, indent=2))
    print(f"\nwall time {wall:.0f} s; wrote {out / 'peers.json'}")
    print("reproduce: python bench/peers.py" + (" --quick" if args.quick else "")
          + (f" --dims {' '.join(map(str, args.dims))}" if args.dims else ""))


if __name__ == "__main__":
    main()
