"""``PrivateGSD``: fit a differentially private synthetic table, then sample from it.

Privacy: the only access to the private table is through the mechanisms, each charged to the
``PrivacyLedger`` before its noise is drawn; the genetic algorithm sees the noisy answers only,
so the synthetic table is post-processing. The budget is ρ = ``rho_from_epsilon(ε, δ)``
(δ defaults to 1/N², N public).

* ``oneshot``: every workload of the query classes gets ρ/w: Gaussian noise with
  σ = (√2/N)/√(2ρ/w) on its normalised counts; the GA fits all of them.
* ``adaptive``: T rounds of ρ/T each: half selects K unmeasured workloads by Gumbel top-K on
  their current largest error (sensitivity 1/N), half measures them (ρ/(2TK) each); the GA
  fits every workload measured so far, warm-started from the previous round's table.

The GA starts from a table drawn from the 1-way marginals implied by the first noisy answers
(``ga.marginal_start``: post-processing, no extra budget).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bbzo.blackbox.zo.population import Child, PopulationSearch, population_minimize
from bbzo.checks import int_at_least, one_of, positive
from bbzo.errors import InputError
from bbzo.privacy.gsd.accounting import (
    LEDGER_FILE,
    PrivacyLedger,
    check_delta,
    rho_from_epsilon,
)
from bbzo.privacy.gsd.domain import Domain, write_csv
from bbzo.privacy.gsd.evaluate import NON_PRIVATE_NOTE, marginal_errors
from bbzo.privacy.gsd.ga import (
    QueryFitness,
    as_array,
    code_dtype,
    marginal_start,
    one_cell_crossover,
    one_cell_mutation,
)
from bbzo.privacy.gsd.mechanisms import gaussian_measure, gumbel_top_k
from bbzo.privacy.gsd.queries import (
    MAX_CELLS,
    Workload,
    class_workloads,
    ordered,
    parse_query_classes,
    query_set,
    sensitivity,
    workload_label,
    workload_max_errors,
)
from bbzo.runs import RunFolder

MODES = ("oneshot", "adaptive")
Progress = Callable[[str, int, int], None]


class PrivateGSD:
    """Private-GSD synthesizer (scikit-learn-like: plain constructor, ``fit``, ``sample``).

    Args:
        epsilon: ε > 0 of the (ε, δ)-DP guarantee.
        delta: δ in (0, 1); None: 1/N² for the N private rows.
        queries: query classes to preserve ("1way", "2way", "3way", "prefix": oneshot only), a
            sequence or "2way,3way".
        mode: "oneshot" or "adaptive".
        rows: synthetic rows N′.
        generations: most GA generations in all (split evenly over adaptive rounds).
        rounds: adaptive rounds T (default: ⌈workloads / top_k⌉, at most 10).
        top_k: workloads selected per adaptive round.
        elite: elite size of the population search; children: children per generation (half
            mutations, half crossovers).
        patience: stop a GA fit when its loss improved by less than ``tolerance`` (relative)
            over this many generations (default: ``rows``).
        seed: seeds the noise, the GA and ``sample``.

    Attributes after ``fit``: ``synthetic_`` (N′, m) codes (smallest unsigned dtype),
    ``domain_``, ``ledger_``, ``summary_`` (privacy-safe: ε, δ, ρ, ρ per mechanism,
    generations, seconds).
    """

    def __init__(self, epsilon: float, delta: float | None = None, *,
                 queries: str | tuple[str, ...] = ("2way",), mode: str = "oneshot",
                 rows: int = 2000, generations: int = 20000, rounds: int | None = None,
                 top_k: int = 5, elite: int = 5, children: int = 100,
                 patience: int | None = None, tolerance: float = 1e-4, seed: int = 0) -> None:
        self.epsilon = positive("epsilon", epsilon)
        self.delta = None if delta is None else check_delta(delta)
        self.queries = parse_query_classes(queries)
        self.mode = one_of("mode", mode, MODES)
        self.rows = int_at_least("rows", rows, 2)
        self.generations = int_at_least("generations", generations)
        self.rounds = None if rounds is None else int_at_least("rounds", rounds)
        self.top_k = int_at_least("top_k", top_k)
        self.elite = int_at_least("elite", elite)
        self.children = int_at_least("children", children)
        self.patience = int_at_least("patience", patience if patience is not None else rows)
        self.tolerance = positive("tolerance", tolerance)
        self.seed = int_at_least("seed", seed, 0)

    def fit(self, data: Any, domain: Domain | dict | str, *, run: RunFolder | None = None,
            progress: Progress | None = None) -> PrivateGSD:
        """Fit to ``data`` (CSV path, DataFrame or mapping of columns) over ``domain`` (a
        ``Domain``, its dict or a JSON path). Every input check runs before any charge; with
        ``run`` the ledger is written to its ``privacy_ledger.jsonl``."""
        domain, codes, workloads = self.check(data, domain)
        n = len(codes)
        delta = self.delta if self.delta is not None else 1.0 / n ** 2
        rho = rho_from_epsilon(self.epsilon, delta)
        rng = np.random.default_rng(self.seed)
        self.domain_, self.ledger_ = domain, PrivacyLedger(rho, run)
        start = time.perf_counter()
        if self.mode == "oneshot":
            measured = self._measure(codes, workloads, rho / len(workloads), rng)
            table = marginal_start(domain.sizes, measured, self.rows, rng)
            table, generations = self._ga(table, measured, self.generations, rng, progress, "GA")
        else:
            table, generations = self._adaptive(codes, workloads, rho, rng, progress)
        self.synthetic_ = table
        self.summary_ = {
            "epsilon": self.epsilon, "delta": delta, "rho": rho,
            "rho_spent": self.ledger_.spent, "rho_by_mechanism": self.ledger_.by_mechanism(),
            "mode": self.mode, "queries": list(self.queries), "rows": n,
            "synthetic_rows": self.rows, "workloads": len(workloads),
            "generations": generations, "seconds": time.perf_counter() - start,
            "seed": self.seed}
        return self

    def check(self, data: Any, domain: Domain | dict | str
              ) -> tuple[Domain, np.ndarray, list[Workload]]:
        """Every input check of ``fit``, with no side effect: the domain, the (N, m) codes and
        the workloads of the query classes."""
        domain = domain if isinstance(domain, Domain) else (
            Domain.from_dict(domain) if isinstance(domain, dict) else Domain.from_file(domain))
        codes = domain.encode(data)
        workloads = ordered([w for q in self.queries for w in class_workloads(len(domain), q)])
        if self.mode == "oneshot":
            query_set(domain.sizes, workloads)  # refuses an oversized workload set
        elif "prefix" in self.queries:
            raise InputError("prefix queries are measured in oneshot mode only; use --mode "
                             "oneshot or drop prefix from --queries")
        else:
            self._schedule(workloads, domain.sizes)
        return domain, codes, workloads

    def _schedule(self, workloads: list[Workload], sizes: np.ndarray) -> tuple[int, int]:
        """Adaptive (rounds, workloads per round); refuses a schedule that could measure more
        cells than the GA may hold."""
        k = min(self.top_k, len(workloads))
        rounds = self.rounds or min(10, math.ceil(len(workloads) / k))
        if rounds * k > len(workloads):
            raise InputError(f"{rounds} rounds of {k} workloads need {rounds * k} workloads, "
                             f"the query classes give {len(workloads)}; lower rounds or top_k")
        cells = sorted((int(np.prod(sizes[list(w)])) for w in workloads), reverse=True)
        if sum(cells[:rounds * k]) > MAX_CELLS:
            raise InputError(f"{rounds} rounds of {k} workloads may measure "
                             f"{sum(cells[:rounds * k]):,} cells, more than {MAX_CELLS:,}; "
                             f"lower rounds or top_k, or use coarser numeric bins")
        return rounds, k

    def sample(self, n: int | None = None) -> dict[str, list[str]]:
        """``n`` synthetic rows (default N′: the fitted table itself; otherwise drawn from it
        uniformly with replacement), decoded to the data's values, column name → values."""
        codes = self.sample_codes(n)
        return self.domain_.decode(codes)

    def sample_codes(self, n: int | None = None) -> np.ndarray:
        """``n`` synthetic rows as (n, m) codes (see ``sample``)."""
        if not hasattr(self, "synthetic_"):
            raise InputError("call fit(data, domain) before sample()")
        if n is None:
            return self.synthetic_.copy()
        n = int_at_least("n", n)
        rows = np.random.default_rng([self.seed, n]).integers(len(self.synthetic_), size=n)
        return self.synthetic_[rows]

    def _measure(self, codes: np.ndarray, workloads: list[Workload], rho: float,
                 rng: np.random.Generator) -> dict[Workload, np.ndarray]:
        """Noisy normalised answers of each workload, ``rho`` each."""
        out = {}
        sizes = self.domain_.sizes
        for w in workloads:
            out[w] = gaussian_measure(
                query_set(sizes, [w]).answers(codes), sensitivity=sensitivity(w, sizes,
                                                                              len(codes)),
                rho=rho, ledger=self.ledger_, workload=workload_label(w, self.domain_.names),
                rng=rng)
        return out

    def _ga(self, table: np.ndarray, measured: dict[Workload, np.ndarray], generations: int,
            rng: np.random.Generator, progress: Progress | None,
            label: str) -> tuple[np.ndarray, int]:
        """Run the population search from ``table`` against ``measured`` answers; the best
        table and the generations run."""
        workloads = ordered(measured)
        fitness = QueryFitness(query_set(self.domain_.sizes, workloads),
                               np.concatenate([measured[w] for w in workloads]), self.rows)
        start = Child(table)
        search = PopulationSearch(
            [start], mutate=one_cell_mutation(self.domain_.sizes), crossover=one_cell_crossover,
            elite_size=self.elite, children=self.children, init_losses=[fitness.full(start)],
            seed=int(rng.integers(2 ** 31)))
        window: list[float] = []

        def watch(record: dict) -> bool:
            window.append(record["best"])
            if progress is not None and (record["nit"] % 100 == 0 or record["nit"] == generations):
                progress(label, record["nit"], generations)
            if len(window) > self.patience:
                old = window.pop(0)
                return old - record["best"] <= self.tolerance * old
            return False

        result = population_minimize(fitness, search, generations=generations, callback=watch)
        return as_array(result.x).copy(), result.nit

    def _adaptive(self, codes: np.ndarray, workloads: list[Workload], rho: float,
                  rng: np.random.Generator, progress: Progress | None) -> tuple[np.ndarray, int]:
        """Rounds of select, measure, fit; round 1 selects against a uniform random table."""
        sizes = self.domain_.sizes
        table = rng.integers(0, sizes, (self.rows, len(sizes))).astype(code_dtype(sizes))
        rounds, k = self._schedule(workloads, self.domain_.sizes)
        per_round = rho / rounds
        left, measured, total = list(workloads), {}, 0
        sensitivity = 1.0 / len(codes)
        for t in range(rounds):
            errors = workload_max_errors(self.domain_.sizes, left, codes, table)
            picked = gumbel_top_k(errors, k, sensitivity=sensitivity, rho=per_round / 2,
                                  ledger=self.ledger_, workload=f"select round {t + 1}", rng=rng)
            chosen = [left[i] for i in sorted(picked)]
            left = [w for w in left if w not in chosen]
            measured.update(self._measure(codes, chosen, per_round / (2 * k), rng))
            if t == 0:
                table = marginal_start(self.domain_.sizes, measured, self.rows, rng)
            table, used = self._ga(table, measured, max(1, self.generations // rounds), rng,
                                   progress, f"round {t + 1}/{rounds}")
            total += used
        return table, total


def fit_to_run(gsd: PrivateGSD, data: Any, domain: Domain, run: RunFolder, *,
               order: list[str], evaluate: bool = False,
               progress: Progress | None = None) -> dict:
    """Fit ``gsd`` on checked ``data`` (see ``PrivateGSD.check``) and write the run folder:
    ``privacy_ledger.jsonl`` (during the fit), ``synthetic.csv`` (columns ``order``, the
    data's encoding) and ``summary.json``. With ``evaluate`` the summary gains
    ``evaluation`` (errors per query class, measured on the true data and marked
    non-private). Returns the summary."""
    gsd.fit(data, domain, run=run, progress=progress)
    with run.atomic("synthetic.csv") as tmp:
        write_csv(tmp, gsd.sample(), order)
    summary = {**gsd.summary_, "files": ["config.json", LEDGER_FILE, "synthetic.csv",
                                         "summary.json"]}
    if evaluate:
        errors = marginal_errors(domain.sizes, domain.encode(data), gsd.synthetic_, gsd.queries)
        summary["evaluation"] = {"non_private": True, "note": NON_PRIVATE_NOTE, **errors}
    run.write_summary(summary)
    return summary
