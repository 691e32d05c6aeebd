"""``PrivateGSD``: fit a differentially private synthetic table, then sample from it.

Privacy: the only access to the private table is through the mechanisms, each charged to the
``PrivacyLedger`` before its noise is drawn; the genetic algorithm sees the noisy answers only,
so the synthetic table is post-processing. The budget is ρ = ``rho_from_epsilon(ε, δ)``
(δ defaults to 1/N², N public).

A fit is a sequence of stages; each measures, then runs the GA on every answer measured so far,
warm-started from the previous stage's table:

* ``oneshot``: one stage; every workload of the query classes gets ρ/w: Gaussian noise with
  σ = Δ/√(2ρ/w) on its normalised answers (Δ: the workload's sensitivity, see ``queries``).
  A class too large to fit (more than ``ONESHOT_CELLS`` answers in all, e.g. the 364 3-way
  marginals of adult, 20.9M cells) is measured on a uniformly random subset of its workloads
  drawn from a public seed (``[seed, 1]``, never the data) until the cells are used up, or of
  ``max_workloads`` workloads; ``summary_["workload_selection"]`` says which.
* ``adaptive``: T rounds of ρ/T each: ``select_share`` of it selects K unmeasured workloads by
  Gumbel top-K on their current largest error (sensitivity 1/N), the rest measures them. A
  round's candidates are the workloads of at most (``FIT_CELLS`` − cells measured so far)/K
  cells (cell counts are public), so the fitted answers never exceed ``FIT_CELLS``; a round
  left without candidates measures nothing (its ρ stays unspent).
* ``hybrid``: a one-shot stage on the cheap classes with ``oneshot_share`` of ρ: the 1-way
  marginals of every column, plus 2-way when a costlier class (3way, prefix, range,
  halfspace) is asked; then T adaptive rounds on the other classes with the rest.

The GA starts from a table drawn from the 1-way marginals implied by the first noisy answers
(``ga.marginal_start``: post-processing, no extra budget); an adaptive round whose answers
first cover a column redraws that column the same way before its GA (a column no fitted
workload held is uniform noise: redrawing it loses nothing and saves the GA thousands of
generations). With a run folder each stage's
measurements are saved before its GA starts and the GA checkpoints every
``checkpoint_every`` generations (``checkpoint``), so ``fit(..., resume=True)`` never measures
twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bbzo.blackbox.zo.population import Child, PopulationSearch, population_minimize
from bbzo.checks import fraction, int_at_least, one_of, positive
from bbzo.errors import InputError
from bbzo.privacy.gsd.accounting import (
    LEDGER_FILE,
    PrivacyLedger,
    check_delta,
    rho_from_epsilon,
)
from bbzo.privacy.gsd.checkpoint import (
    CHECKPOINT_FILE,
    MEASUREMENTS_FILE,
    StageStart,
    load_checkpoint,
    load_stage,
    save_checkpoint,
    save_stage,
)
from bbzo.privacy.gsd.domain import Domain, write_csv
from bbzo.privacy.gsd.evaluate import NON_PRIVATE_NOTE, marginal_errors
from bbzo.privacy.gsd.ga import (
    QueryFitness,
    as_array,
    code_dtype,
    covered_columns,
    marginal_start,
    one_cell_crossover,
    one_cell_mutation,
)
from bbzo.privacy.gsd.mechanisms import gaussian_measure, gumbel_top_k
from bbzo.privacy.gsd.queries import (
    HALFSPACE_BLOCKS,
    Workload,
    cells,
    class_workloads,
    ordered,
    parse_query_classes,
    query_set,
    sensitivity,
    workload_label,
    workload_max_errors,
)
from bbzo.runs import RunFolder

MODES = ("oneshot", "adaptive", "hybrid")
ONESHOT_CELLS = 1 << 22  # answers a one-shot stage measures at most (GA speed and memory)
FIT_CELLS = 1 << 22  # answers the adaptive rounds let the GA fit at most
DEFAULT_ROUNDS = 3  # adaptive rounds (tuned on adult at ε = 1, see the README)
CHEAP_CLASSES = ("1way", "2way")  # measured one-shot in hybrid mode
MARGINAL_CLASSES = ("1way", "2way", "3way")  # what evaluate.marginal_errors reports
Progress = Callable[[str, int, int], None]


class PrivateGSD:
    """Private-GSD synthesizer (scikit-learn-like: plain constructor, ``fit``, ``sample``).

    Args:
        epsilon: ε > 0 of the (ε, δ)-DP guarantee.
        delta: δ in (0, 1); None: 1/N² for the N private rows.
        queries: query classes to preserve ("1way", "2way", "3way", "prefix", "range",
            "halfspace"), a sequence or "2way,3way".
        mode: "oneshot", "adaptive" or "hybrid" (module docstring).
        rows: synthetic rows N′.
        generations: most GA generations in all (split evenly over the stages).
        rounds: adaptive rounds T (default: ``DEFAULT_ROUNDS``, at most workloads / top_k).
        top_k: workloads selected per adaptive round (default: ⌊n / T⌋ for the n smallest
            workloads whose cells fit ``FIT_CELLS``: nearly every workload when they all fit).
        elite: elite size of the population search; children: children per generation (half
            mutations, half crossovers).
        patience: stop a GA fit when its loss improved by less than ``tolerance`` (relative)
            over this many generations (default: ``rows``).
        seed: seeds the noise, the GA, the halfspaces, a one-shot subset and ``sample``.
        select_share: share of each adaptive round's ρ spent on selection, in (0, 1).
        oneshot_share: share of ρ the hybrid mode's one-shot stage spends, in (0, 1).
        max_workloads: one-shot: measure at most this many workloads per class (a public
            random subset); None: as many as ``ONESHOT_CELLS`` allows.
        halfspaces: workloads of the halfspace class (``HALFSPACE_BLOCK`` queries each).
        checkpoint_every: GA generations between checkpoints when fitting into a run folder.

    Attributes after ``fit``: ``synthetic_`` (N′, m) codes (smallest unsigned dtype),
    ``domain_``, ``ledger_``, ``summary_`` (privacy-safe: ε, δ, ρ, ρ per mechanism,
    the workloads measured, generations, seconds).
    """

    def __init__(self, epsilon: float, delta: float | None = None, *,
                 queries: str | tuple[str, ...] = ("2way",), mode: str = "oneshot",
                 rows: int = 2000, generations: int = 20000, rounds: int | None = None,
                 top_k: int | None = None, elite: int = 5, children: int = 100,
                 patience: int | None = None, tolerance: float = 1e-4, seed: int = 0,
                 select_share: float = 0.1, oneshot_share: float = 0.5,
                 max_workloads: int | None = None, halfspaces: int = HALFSPACE_BLOCKS,
                 checkpoint_every: int = 1000) -> None:
        self.epsilon = positive("epsilon", epsilon)
        self.delta = None if delta is None else check_delta(delta)
        self.queries = parse_query_classes(queries)
        self.mode = one_of("mode", mode, MODES)
        self.rows = int_at_least("rows", rows, 2)
        self.generations = int_at_least("generations", generations)
        self.rounds = None if rounds is None else int_at_least("rounds", rounds)
        self.top_k = None if top_k is None else int_at_least("top_k", top_k)
        self.elite = int_at_least("elite", elite)
        self.children = int_at_least("children", children)
        self.patience = int_at_least("patience", patience if patience is not None else rows)
        self.tolerance = positive("tolerance", tolerance)
        self.seed = int_at_least("seed", seed, 0)
        self.select_share = _open_share("select_share", select_share)
        self.oneshot_share = _open_share("oneshot_share", oneshot_share)
        self.max_workloads = None if max_workloads is None else int_at_least(
            "max_workloads", max_workloads)
        self.halfspaces = int_at_least("halfspaces", halfspaces)
        self.checkpoint_every = int_at_least("checkpoint_every", checkpoint_every)

    def fit(self, data: Any, domain: Domain | dict | str, *, run: RunFolder | None = None,
            progress: Progress | None = None, resume: bool = False) -> PrivateGSD:
        """Fit to ``data`` (CSV or parquet path, DataFrame or mapping of columns) over
        ``domain`` (a ``Domain``, its dict or a JSON path). Every input check runs before any
        charge; with ``run`` the ledger is written to its ``privacy_ledger.jsonl`` and the
        measurements and GA checkpoints beside it. ``resume`` (needs ``run``) continues the
        fit recorded there: no stage already measured is measured again, and every charge
        already in the ledger counts against the budget."""
        domain, codes, workloads = self.check(data, domain)
        if resume and run is None:
            raise InputError("resume needs the run folder of the fit to continue (run=...)")
        n = len(codes)
        delta = self.delta if self.delta is not None else 1.0 / n ** 2
        rho = rho_from_epsilon(self.epsilon, delta)
        self.domain_ = domain
        self.ledger_ = PrivacyLedger.restore(rho, run) if resume else PrivacyLedger(rho, run)
        start = time.perf_counter()
        oneshot, adaptive, selection = self._plan(domain, workloads)
        self.synthetic_, generations = self._stages(codes, oneshot, adaptive, rho, run,
                                                    progress, resume)
        self.summary_ = {
            "epsilon": self.epsilon, "delta": delta, "rho": rho,
            "rho_spent": self.ledger_.spent, "rho_by_mechanism": self.ledger_.by_mechanism(),
            "mode": self.mode, "queries": list(self.queries), "rows": n,
            "synthetic_rows": self.rows, "workloads": len(workloads),
            "workload_selection": selection, "generations": generations,
            "seconds": time.perf_counter() - start, "seed": self.seed}
        return self

    def check(self, data: Any, domain: Domain | dict | str
              ) -> tuple[Domain, np.ndarray, list[Workload]]:
        """Every input check of ``fit``, with no side effect: the domain, the (N, m) codes and
        the workloads of the query classes."""
        domain = domain if isinstance(domain, Domain) else (
            Domain.from_dict(domain) if isinstance(domain, dict) else Domain.from_file(domain))
        codes = domain.encode(data)
        workloads = ordered([w for q in self.queries for w in self.workloads_of(domain, q)])
        self._plan(domain, workloads)
        return domain, codes, workloads

    def workloads_of(self, domain: Domain, query_class: str) -> list[Workload]:
        """Every workload of ``query_class`` on ``domain`` (numeric columns, halfspace seed
        and count as this synthesizer builds them)."""
        return class_workloads(len(domain), query_class, numeric=numeric_columns(domain),
                               seed=self.seed, halfspaces=self.halfspaces)

    def _plan(self, domain: Domain, workloads: list[Workload]
              ) -> tuple[list[Workload], list[Workload], dict]:
        """The workloads measured one-shot, the adaptive candidates and how the one-shot ones
        were chosen (per class: measured, of, how); refuses a plan that cannot fit."""
        if self.mode == "adaptive":
            return [], workloads, {"adaptive": self._adaptive_note(workloads, domain.sizes)}
        by_class = {q: self.workloads_of(domain, q) for q in self.queries}
        adaptive: list[Workload] = []
        if self.mode == "hybrid":
            costly = [q for q in self.queries if q not in CHEAP_CLASSES]
            cheap = ["1way", *(q for q in self.queries if q in CHEAP_CLASSES and costly)]
            rest = costly or [q for q in self.queries if q != "1way"]
            if not rest:
                raise InputError("hybrid mode needs a class beyond 1way to select adaptively; "
                                 "add 2way to --queries or use --mode oneshot")
            by_class = {q: self.workloads_of(domain, q) for q in dict.fromkeys(cheap)}
            adaptive = ordered([w for q in rest for w in self.workloads_of(domain, q)])
        oneshot, selection = self._oneshot_subset(by_class, domain.sizes)
        if adaptive:
            selection["adaptive"] = self._adaptive_note(adaptive, domain.sizes)
        return oneshot, adaptive, selection

    def _adaptive_note(self, workloads: list[Workload], sizes: np.ndarray) -> dict:
        """How the adaptive rounds choose among ``workloads`` (``_schedule`` checks them)."""
        rounds, k = self._schedule(workloads, sizes)
        return {"rounds": rounds, "top_k": k, "of": len(workloads),
                "how": "Gumbel top-K (exponential mechanism) on each unmeasured workload's "
                       "current largest error"}

    def _oneshot_subset(self, by_class: dict[str, list[Workload]], sizes: np.ndarray
                        ) -> tuple[list[Workload], dict]:
        """Every workload of each class, cheapest class first, while ``ONESHOT_CELLS`` lasts;
        a class that does not fit whole (or has more than ``max_workloads``) is measured on a
        random subset in the order of a public permutation (seed ``[seed, 1]``)."""
        left, chosen, selection = ONESHOT_CELLS, [], {}
        order = sorted(by_class, key=lambda q: sum(cells(w, sizes) for w in by_class[q]))
        for q in order:
            workloads = by_class[q]
            size = [cells(w, sizes) for w in workloads]
            limit = self.max_workloads or len(workloads)
            if sum(size) <= left and limit >= len(workloads):
                chosen += workloads
                left -= sum(size)
                continue
            permutation = np.random.default_rng([self.seed, 1]).permutation(len(workloads))
            taken = []
            for i in permutation:
                if size[i] <= left and len(taken) < limit:
                    taken.append(int(i))
                    left -= size[i]
            if not taken:
                raise InputError(f"every {q} workload holds more cells ({min(size):,}) than are "
                                 f"left to measure ({left:,} of {ONESHOT_CELLS:,}); use fewer "
                                 f"columns or coarser numeric bins")
            chosen += [workloads[i] for i in sorted(taken)]
            selection[q] = {"measured": len(taken), "of": len(workloads),
                            "how": f"uniform random subset (public seed [{self.seed}, 1]) "
                                   f"within {ONESHOT_CELLS:,} cells"}
        return ordered(chosen), selection

    def _schedule(self, workloads: list[Workload], sizes: np.ndarray) -> tuple[int, int]:
        """Adaptive (rounds, workloads per round); refuses a schedule whose smallest
        workloads could not all be measured within ``MAX_CELLS``."""
        w = len(workloads)
        if self.top_k is None:  # as many as the smallest workloads' cells allow
            rounds = min(self.rounds or DEFAULT_ROUNDS, w)
            fitting = np.cumsum(sorted(cells(x, sizes) for x in workloads)) <= FIT_CELLS
            k = max(1, int(fitting.sum()) // rounds)
        else:
            k = min(self.top_k, w)
            rounds = self.rounds or max(1, min(DEFAULT_ROUNDS, w // k))
        if rounds * k > len(workloads):
            raise InputError(f"{rounds} rounds of {k} workloads need {rounds * k} workloads, "
                             f"the query classes give {len(workloads)}; lower rounds or top_k")
        smallest = sorted(cells(w, sizes) for w in workloads)[:rounds * k]
        if sum(smallest) > FIT_CELLS:
            raise InputError(f"{rounds} rounds of {k} workloads measure at least "
                             f"{sum(smallest):,} cells, more than {FIT_CELLS:,}; lower rounds "
                             f"or top_k, or use coarser numeric bins")
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
        sizes, numeric = self.domain_.sizes, numeric_columns(self.domain_)
        for w in workloads:
            out[w] = gaussian_measure(
                query_set(sizes, [w], numeric=numeric).answers(codes),
                sensitivity=sensitivity(w, sizes, len(codes)), rho=rho, ledger=self.ledger_,
                workload=workload_label(w, self.domain_.names), rng=rng)
        return out

    def _stages(self, codes: np.ndarray, oneshot: list[Workload], adaptive: list[Workload],
                rho: float, run: RunFolder | None, progress: Progress | None,
                resume: bool) -> tuple[np.ndarray, int]:
        """Run (or, with ``resume``, continue) every stage; the final table and the GA
        generations run in all."""
        sizes = self.domain_.sizes
        rounds, k = self._schedule(adaptive, sizes) if adaptive else (0, 0)
        stages = (1 if oneshot else 0) + rounds
        rho_oneshot = rho * (self.oneshot_share if adaptive else 1.0) if oneshot else 0.0
        per_round = (rho - rho_oneshot) / rounds if rounds else 0.0
        saved = load_stage(run) if resume else None
        checkpoint = load_checkpoint(run) if saved is not None else None
        rng = np.random.default_rng(self.seed)
        table, measured, total = None, {}, 0
        for stage in range(saved.stage if saved else 0, stages):
            label = f"stage {stage + 1}/{stages}" if stages > 1 else "GA"
            if saved is not None and stage == saved.stage:
                measured, table, total = saved.measured, saved.table, saved.generations
                rng.bit_generator.state, seed = saved.rng_state, saved.seed
                resumed = checkpoint if checkpoint and checkpoint["stage"] == stage else None
            else:
                if stage == 0 and oneshot:
                    measured.update(self._measure(codes, oneshot, rho_oneshot / len(oneshot),
                                                  rng))
                else:
                    covered = covered_columns(measured)
                    table = self._select_and_measure(codes, adaptive, measured, table, k,
                                                     per_round, rng, label)
                    fresh = sorted(covered_columns(measured) - covered)
                    if stage > 0 and fresh:  # warm start: columns first measured now
                        table = marginal_start(sizes, measured, self.rows, rng, table=table,
                                               columns=fresh)
                if table is None or (stage == 0 and not oneshot):
                    table = marginal_start(sizes, measured, self.rows, rng)
                seed, resumed = int(rng.integers(2 ** 31)), None
                if run is not None:
                    save_stage(run, StageStart(stage, measured, rng.bit_generator.state,
                                               table, seed, total))
            table, used = self._ga(table, measured, max(1, self.generations // stages), seed,
                                   progress, label, run, stage, resumed)
            total += used
        return table, total

    def _select_and_measure(self, codes: np.ndarray, candidates: list[Workload],
                            measured: dict[Workload, np.ndarray], table: np.ndarray | None,
                            k: int, rho: float, rng: np.random.Generator,
                            label: str) -> np.ndarray:
        """One adaptive round: select ``k`` unmeasured workloads by Gumbel top-K on their
        largest error against ``table`` (a uniform random table when None; only workloads
        whose cells still fit ``MAX_CELLS``), measure them into ``measured``; the table the
        errors were taken on."""
        sizes, numeric = self.domain_.sizes, numeric_columns(self.domain_)
        if table is None:
            table = rng.integers(0, sizes, (self.rows, len(sizes))).astype(code_dtype(sizes))
        room = (FIT_CELLS - sum(a.size for a in measured.values())) // k
        left = [w for w in candidates if w not in measured and cells(w, sizes) <= room]
        k = min(k, len(left))
        if k == 0:
            return table
        errors = workload_max_errors(sizes, left, codes, table, numeric=numeric)
        picked = gumbel_top_k(errors, k, sensitivity=1.0 / len(codes),
                              rho=rho * self.select_share, ledger=self.ledger_,
                              workload=f"select {label}", rng=rng)
        chosen = [left[i] for i in sorted(picked)]
        measured.update(self._measure(codes, chosen, rho * (1 - self.select_share) / k, rng))
        return table

    def _ga(self, table: np.ndarray, measured: dict[Workload, np.ndarray], generations: int,
            seed: int, progress: Progress | None, label: str, run: RunFolder | None,
            stage: int, resumed: dict | None) -> tuple[np.ndarray, int]:
        """Run the population search from ``table`` against ``measured`` answers (continuing
        the checkpoint ``resumed``), checkpointing into ``run``; the best table and the
        generations run."""
        if resumed is not None and resumed["finished"]:
            return resumed["table"], resumed["used"]
        workloads = ordered(measured)
        fitness = QueryFitness(
            query_set(self.domain_.sizes, workloads, numeric=numeric_columns(self.domain_)),
            np.concatenate([measured[w] for w in workloads]), self.rows)
        start = Child(table)
        search = PopulationSearch(
            [start], mutate=one_cell_mutation(self.domain_.sizes), crossover=one_cell_crossover,
            elite_size=self.elite, children=self.children, init_losses=[fitness.full(start)],
            seed=seed)
        window: list[float] = []
        done = 0
        if resumed is not None:
            search.load_state_dict(resumed["search"])
            window, done = resumed["window"], resumed["used"]

        def save(used: int, finished: bool, best: np.ndarray | None = None) -> None:
            if run is not None:
                save_checkpoint(run, {"stage": stage, "search": search.state_dict(),
                                      "window": window, "used": used, "finished": finished,
                                      "table": best})

        def watch(record: dict) -> bool:
            nit = done + record["nit"]
            window.append(record["best"])
            if nit % self.checkpoint_every == 0:
                save(nit, False)
            if progress is not None and (nit % 100 == 0 or nit == generations):
                progress(label, nit, generations)
            if len(window) > self.patience:
                old = window.pop(0)
                return old - record["best"] <= self.tolerance * old
            return False

        used = done
        if done < generations:
            result = population_minimize(fitness, search, generations=generations - done,
                                         callback=watch)
            used += result.nit
        best = as_array(search.best[0]).copy()
        save(used, True, best)
        return best, used


def _open_share(name: str, value: float) -> float:
    """A share in the open interval (0, 1)."""
    share = fraction(name, value)
    if share >= 1.0:
        raise InputError(f"{name} must be in (0, 1), got {value!r}")
    return share


def numeric_columns(domain: Domain) -> list[int]:
    """Indices of the domain's numeric columns (range queries, halfspace features)."""
    return [j for j, c in enumerate(domain.columns) if c.kind == "numeric"]


def fit_to_run(gsd: PrivateGSD, data: Any, domain: Domain, run: RunFolder, *,
               order: list[str], evaluate: bool = False, progress: Progress | None = None,
               resume: bool = False) -> dict:
    """Fit ``gsd`` on checked ``data`` (see ``PrivateGSD.check``; ``resume``: continue the
    fit recorded in ``run``) and write the run folder: ``privacy_ledger.jsonl``,
    ``measurements.npz`` and ``checkpoint.pkl`` (during the fit), ``synthetic.csv`` (columns
    ``order``, the data's encoding) and ``summary.json``. With ``evaluate`` the summary gains
    ``evaluation`` (errors per query class, measured on the true data and marked
    non-private). Returns the summary."""
    gsd.fit(data, domain, run=run, progress=progress, resume=resume)
    with run.atomic("synthetic.csv") as tmp:
        write_csv(tmp, gsd.sample(), order)
    summary = {**gsd.summary_, "files": ["config.json", LEDGER_FILE, MEASUREMENTS_FILE,
                                         CHECKPOINT_FILE, "synthetic.csv", "summary.json"]}
    if evaluate:
        codes = domain.encode(data)
        known = [q for q in gsd.queries if q in (*MARGINAL_CLASSES, "prefix")]
        errors = marginal_errors(domain.sizes, codes, gsd.synthetic_, known) if known else {}
        for q in gsd.queries:
            if q not in known:
                errors[q] = class_errors(gsd, codes, q)
        summary["evaluation"] = {"non_private": True, "note": NON_PRIVATE_NOTE, **errors}
    run.write_summary(summary)
    return summary


def class_errors(gsd: PrivateGSD, codes: np.ndarray, query_class: str) -> dict[str, float]:
    """NOT PRIVATE: ``max`` and ``mean`` absolute error of the fitted synthetic table on
    every query of one class (as ``gsd`` built them: numeric columns, halfspace seed)
    against the true ``codes``."""
    q = query_set(gsd.domain_.sizes, gsd.workloads_of(gsd.domain_, query_class),
                  numeric=numeric_columns(gsd.domain_))
    gap = np.abs(q.answers(codes) - q.answers(gsd.synthetic_))
    return {"max": float(gap.max()), "mean": float(gap.mean())}
