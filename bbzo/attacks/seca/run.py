"""``run_seca``: SECA over a question set, written to a run folder (the library entry point).

Roles and their models (specs as in ``bbzo.blackbox.targets.spec``):

| role | default | used for |
| --- | --- | --- |
| target | ``hf:smollm2-135m-instruct`` | the model under attack (the objective) |
| proposer | ``hf:smollm2-135m-instruct`` | writes rewrites (+ rules: ``proposer_mode``) |
| embedder | ``embed:minilm-l6`` | equivalence by embedding similarity (None: off) |
| reference | ``hf:smollm2-135m-instruct`` | coherence by perplexity (None: off) |
| judge | None (off) | the paper's LLM judge: five equivalence criteria + fluency |

Every check runs in ``cascade.build_constraints`` order: option leak, the offline checkers
(``equivalence.py``), embedding, perplexity, judge; ``bbzo attack check`` audits the same
checks on labelled pairs. The judge is off by default: the bundled 135M model cannot act as
one (its replies never parse as the requested JSON); point ``judge`` at a capable model to
turn it on. The roles are
``bbzo.runs.Roles``: roles on the same spec share one loaded model, each role has its own
``QueryLayer``, all layers write ONE ledger (``ledger.sqlite`` in the run folder) and spend ONE
``Budget``: ``budget_queries`` counts every request sent to any role's model (answers from the
ledger are free and not counted), ``max_cost`` every US dollar they charge. The budget is per
invocation: a resumed run starts a fresh one, and what the ledger already holds costs nothing.

``SecaConfig()`` is the paper-sized run (30 steps, every question); ``SecaConfig.demo()`` the
demo (3 built-in questions, 5 steps). ``run_seca`` takes the parts a notebook may swap
(``objective``, ``proposer``, ``checks``); the roles a swapped part would use are not loaded.

Everything is validated before the first file is written: the config, the run folder, the
question file, the models (loaded before ``config.json`` is written) and every question's
length against the target's and the proposer's context.

``baseline="random"`` runs the random feasible-rephrasing baseline (``baseline.py``) through
the same machinery and writes the same files; ``match`` gives it a SECA run's budget.

Files: ``.bbzo-run.json`` (manifest), ``config.json``, ``results.jsonl`` (one record per
question, appended as each question finishes), ``summary.json``, ``ledger.sqlite``. The item
loop is ``bbzo.runs.run_items``: resume skips the questions already in ``results.jsonl``; a
question cut short by a crash or by the budget is searched again, its requests answered from
the ledger; a question that fails on its own is recorded with an ``error`` and the run goes on
(retried on resume only with ``retry_errors``).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bbzo.attacks.seca.baseline import (
    BASELINES,
    matched_budgets,
    parent_selection,
    step_limit,
)
from bbzo.attacks.seca.cascade import build_constraints
from bbzo.attacks.seca.constraints import Checks, Verdict
from bbzo.attacks.seca.objective import OBJECTIVES, Objective, make_objective
from bbzo.attacks.seca.proposer import FORMATS, LLMProposer
from bbzo.attacks.seca.questions import Question, load_questions
from bbzo.attacks.seca.rules import HybridProposer, RulesProposer
from bbzo.attacks.seca.search import choose_target, seca_search
from bbzo.blackbox.budget import Budget
from bbzo.blackbox.targets.spec import check_fits
from bbzo.checks import fraction, int_at_least, one_of, positive
from bbzo.errors import InputError
from bbzo.runs import RunFolder, as_run_folder, check_run_folder
from bbzo.runs.driver import Progress, is_error, latest_records, pending, run_items
from bbzo.runs.folder import check_same_settings, read_jsonl_file
from bbzo.runs.roles import ModelSettings, Roles
from bbzo.runs.settings import FieldError, check_fields

DEFAULT_LM = "hf:smollm2-135m-instruct"
DEFAULT_EMBEDDER = "embed:minilm-l6"
ROLES = ("target", "proposer", "embedder", "reference", "judge")
PROPOSER_MODES = ("auto", "llm", "rules", "hybrid")
RULES = "rules"  # --proposer rules: the rules proposer alone, no proposer model
FILES = [".bbzo-run.json", "config.json", "results.jsonl", "summary.json", "ledger.sqlite"]
DEMO_LIMIT = 3  # the demo: about five minutes on 2 CPU cores (SmolLM2: ~15 s per search step)
DEMO_ITERATIONS = 5


@dataclass
class SecaConfig:
    """Everything a SECA run depends on (plain data; stored in ``config.json``).

    Attributes:
        questions: a ``.jsonl``/``.csv`` question file; None for the built-in set.
        target, proposer, judge, embedder, reference: target specs of the roles (module
            table); judge, embedder and reference may be None (that check is off).
        base_url: base URL of an OpenAI-compatible server for an ``openai:`` target.
        objective: ``auto``, ``letter``, ``option`` or ``sampling`` (``objective.py``).
        proposer_mode: ``llm`` (the proposer model alone), ``rules`` (the offline rules
            proposer, ``rules.py``; no proposer model), ``hybrid`` (both) or ``auto``:
            ``llm`` for an API proposer (the paper's), ``hybrid`` for a local one.
            ``proposer="rules"`` means ``rules``.
        proposer_format: ``auto`` (``chat`` for remote proposers, ``completion`` for local
            ones), ``chat`` or ``completion`` (``proposer.py``).
        iterations: most search steps per question.
        candidates: M, rewrites per parent per step.
        parents: N, parents per step.
        budget_queries: most requests sent, all roles together (None: no limit).
        max_cost: most US dollars, all roles together (None: no limit).
        seed: seed of the option shuffle, the proposer's draws and the sampling objective.
        limit: attack only the first ``limit`` questions (None: all).
        shuffle: shuffle each question's options with the seed.
        lexical: run the offline checkers (``equivalence.py``: content alignment,
            negation/antonyms, qualifiers, repetition, agreement) before the model-based checks.
        max_unmatched: most content words a rewrite may add or drop without a near-synonym.
        similarity: least embedding cosine for equivalence.
        coherence_ratio: most perplexity, as a multiple of the original's.
            The defaults (0.9, 5.0) come from SmolLM2 rewrites of built-in questions: fluent
            paraphrases had cosines of 0.90-0.99 and 0.8-5.9x the original's perplexity;
            rewrites that changed the meaning mostly fell below 0.9, and fragments or garbled
            text measured 8x to 10^4x.
        samples: draws per text for the sampling objective.
        temperature: the proposer's sampling temperature.
        proposer_max_tokens / judge_max_tokens: answer lengths.
        rpm / tpm: rate limits for every remote model (None: none).
        device: torch device of local models (None: CUDA if present, else CPU).
        local_batch: requests per forward pass of local models.
        baseline: None for SECA, ``random`` for the random feasible-rephrasing baseline.
        match: a SECA run folder whose texts scored per question set the baseline's budget
            (baseline only; up to ``baseline.MATCHED_STEPS`` x iterations to spend it; None:
            the same iterations x parents x candidates).
    """

    questions: str | None = None
    target: str = DEFAULT_LM
    base_url: str | None = None
    proposer: str = DEFAULT_LM
    judge: str | None = None
    embedder: str | None = DEFAULT_EMBEDDER
    reference: str | None = DEFAULT_LM
    objective: str = "auto"
    proposer_mode: str = "auto"
    proposer_format: str = "auto"
    iterations: int = 30
    candidates: int = 3
    parents: int = 3
    budget_queries: int | None = None
    max_cost: float | None = None
    seed: int = 0
    limit: int | None = None
    shuffle: bool = True
    lexical: bool = True
    max_unmatched: int = 0
    similarity: float = 0.9
    coherence_ratio: float = 5.0
    samples: int = 10
    temperature: float = 1.0
    proposer_max_tokens: int = 32
    judge_max_tokens: int = 128
    rpm: int | None = None
    tpm: int | None = None
    device: str | None = None
    local_batch: int = 16
    baseline: str | None = None
    match: str | None = None

    @classmethod
    def demo(cls, **changes: Any) -> SecaConfig:
        """The demo preset: the first ``DEMO_LIMIT`` built-in questions, ``DEMO_ITERATIONS``
        steps (``make demo``); ``changes`` override fields."""
        return cls(**{"limit": DEMO_LIMIT, "iterations": DEMO_ITERATIONS, **changes})

    def validate(self) -> None:
        """Raise ``FieldError`` (an ``InputError``) naming the first bad field."""
        checks: list[tuple[str, Any]] = []
        for name in ("iterations", "candidates", "parents", "samples", "proposer_max_tokens",
                     "judge_max_tokens", "local_batch"):
            checks.append((name, lambda n=name: int_at_least(n, getattr(self, n))))
        checks.append(("seed", lambda: int_at_least("seed", self.seed, 0)))
        checks.append(("max_unmatched",
                       lambda: int_at_least("max_unmatched", self.max_unmatched, 0)))
        checks.append(("proposer_mode",
                       lambda: one_of("proposer_mode", self.proposer_mode, PROPOSER_MODES)))
        for name in ("limit", "budget_queries", "rpm", "tpm"):
            if getattr(self, name) is not None:
                checks.append((name, lambda n=name: int_at_least(n, getattr(self, n))))
        if self.max_cost is not None:
            checks.append(("max_cost", lambda: positive("max_cost", self.max_cost)))
        checks += [
            ("similarity", lambda: fraction("similarity", self.similarity)),
            ("coherence_ratio", lambda: positive("coherence_ratio", self.coherence_ratio)),
            ("temperature", lambda: positive("temperature", self.temperature)),
            ("objective", lambda: one_of("objective", self.objective, ("auto", *OBJECTIVES))),
            ("proposer_format",
             lambda: one_of("proposer_format", self.proposer_format, ("auto", *FORMATS)))]
        if self.baseline is not None:
            checks.append(("baseline", lambda: one_of("baseline", self.baseline, BASELINES)))
        check_fields(checks)
        if self.baseline is None and self.match is not None:
            raise FieldError("match", "needs --baseline random: it sets a baseline's budget; "
                                      "add baseline='random' or drop match")
        for role in ("target", "proposer"):
            if not isinstance(getattr(self, role), str) or not getattr(self, role).strip():
                raise FieldError(role, f"must be a target spec such as {DEFAULT_LM!r}")
        if self.base_url is not None and not self.target.strip().startswith("openai:"):
            raise FieldError("base_url", f"applies to an openai:<model> target only, not to "
                                         f"{self.target!r}; drop it or use an openai: target")

    def resolved_proposer_mode(self) -> str:
        """``llm``, ``rules`` or ``hybrid`` (``auto`` and ``proposer="rules"`` resolved)."""
        if self.proposer.strip().lower() == RULES:
            return RULES
        if self.proposer_mode != "auto":
            return self.proposer_mode
        return "llm" if self.proposer.strip().startswith("openai:") else "hybrid"

    def budget(self) -> Budget:
        """A fresh budget of this invocation (all roles together)."""
        return Budget(max_queries=self.budget_queries, max_cost=self.max_cost)

    def model_settings(self) -> ModelSettings:
        """How the roles' models are loaded and limited."""
        return ModelSettings(device=self.device, local_batch=self.local_batch,
                             base_url=self.base_url, rpm=self.rpm, tpm=self.tpm)


PRESETS = {"paper": SecaConfig, "demo": SecaConfig.demo}  # name -> (**changes) -> SecaConfig


def open_roles(config: SecaConfig, run: RunFolder,
               specs: dict[str, str | None] | None = None) -> Roles:
    """Load the roles' models (``specs``, default the roles of ``config``) and connect them to
    the run's ledger with the config's budget."""
    if specs is None:
        specs = {role: getattr(config, role) for role in ROLES}
    roles = Roles(specs, config.model_settings())
    try:
        return roles.connect(run.own("ledger.sqlite"), config.budget())
    except BaseException:
        roles.close()
        raise


@dataclass
class SecaParts:
    """The pieces of SECA a run is made of (``run_seca`` builds those not given).

    Attributes:
        objective: reads the target's answer probabilities (``objective.py``).
        proposer: writes rewrites; anything with ``propose(question, parents, m, step)``.
        checks: the feasibility checks (``constraints.Checks``).
    """

    objective: Objective
    proposer: Any
    checks: Checks


def _needed_roles(config: SecaConfig, *, objective: Any, proposer: Any,
                  checks: Any) -> dict[str, str | None]:
    """Role -> spec of the roles the parts to build use (a given part needs no model)."""
    specs: dict[str, str | None] = {}
    if objective is None:
        specs["target"] = config.target
    if proposer is None and config.resolved_proposer_mode() != RULES:
        specs["proposer"] = config.proposer
    if checks is None:
        specs.update(embedder=config.embedder, reference=config.reference, judge=config.judge)
    return specs


def build_parts(config: SecaConfig, roles: Roles, *, objective: Objective | None = None,
                proposer: Any = None, checks: Checks | None = None) -> SecaParts:
    """The given parts, and the others built from ``config`` on the connected ``roles``."""
    layers = roles.layers
    if objective is None:
        objective = make_objective(config.objective, layers["target"], samples=config.samples,
                                   seed=config.seed)
    if proposer is None:
        proposer = _build_proposer(config, layers)
    if checks is None:
        checks = Checks(build_constraints(
            layers, lexical=config.lexical, max_unmatched=config.max_unmatched,
            similarity=config.similarity, coherence_ratio=config.coherence_ratio,
            judge_max_tokens=config.judge_max_tokens))
    return SecaParts(objective, proposer, checks)


def _build_proposer(config: SecaConfig, layers: dict) -> Any:
    """The proposer of ``config.resolved_proposer_mode()``."""
    mode = config.resolved_proposer_mode()
    rules = RulesProposer(seed=config.seed)
    if mode == RULES:
        return rules
    fmt = config.proposer_format
    if fmt == "auto":
        fmt = "chat" if layers["proposer"].target.remote else "completion"
    llm = LLMProposer(layers["proposer"], seed=config.seed, fmt=fmt,
                      temperature=config.temperature, max_tokens=config.proposer_max_tokens)
    return llm if mode == "llm" else HybridProposer(llm, rules)


def _check_lengths(questions: list[Question], roles: Roles) -> None:
    """Every question (with its options) fits the target's and the proposer's context."""
    for role in ("target", "proposer"):
        if role in roles.targets:
            for q in questions:
                check_fits(roles.targets[role], " ".join([q.question, *q.choices]),
                           where=f"question {q.id} (with its options)")


def run_seca(config: SecaConfig | None = None, *, out: str | os.PathLike | RunFolder,
             resume: bool = False, retry_errors: bool = False,
             progress: Progress | None = None, objective: Objective | None = None,
             proposer: Any = None, checks: Checks | None = None) -> dict[str, Any]:
    """Attack every question of ``config.questions`` and write the run folder.

    Args:
        config: the run's settings (default ``SecaConfig()``).
        out: run folder (path or ``RunFolder``); must be empty unless ``resume``.
        resume: continue a folder made by an earlier call with the same config.
        retry_errors: on resume, attack again the questions recorded with an ``error``.
        progress: called as ``progress(label, done, total)`` for the labels ``questions`` and
            ``search`` (steps of the current question).
        objective, proposer, checks: parts to use instead of those built from ``config``
            (``SecaParts``); the models of their roles are then not loaded.

    Returns:
        The summary (also written to ``summary.json``); ``stopped`` holds the reason when the
        budget ran out before every question was done, ``errors`` counts questions recorded
        with an error.
    """
    config = SecaConfig() if config is None else config
    if not isinstance(config, SecaConfig):
        raise InputError(f"config must be a SecaConfig, got {type(config).__name__}")
    config.validate()
    start = time.perf_counter()
    if config.questions is not None:  # one file, however it is named
        config = replace(config, questions=str(Path(config.questions).expanduser().resolve()))
    folder = out.path if isinstance(out, RunFolder) else check_run_folder(out, resume=resume)
    questions = load_questions(config.questions, seed=config.seed, shuffle=config.shuffle,
                               limit=config.limit)
    options = {k: v for k, v in asdict(config).items() if k != "seed"}
    check_same_settings(folder, options, config.seed)
    budgets = matched_budgets(config.match, questions, config.target, config.objective) \
        if config.match else {}
    todo = pending(questions, lambda q: q.id, read_jsonl_file(folder / "results.jsonl"),
                   retry_errors=retry_errors)
    roles = None
    if todo:  # load the models first: a bad spec or a too-long question writes nothing
        roles = Roles(_needed_roles(config, objective=objective, proposer=proposer,
                                    checks=checks), config.model_settings())
    try:
        if roles is not None:
            _check_lengths(todo, roles)
        run = as_run_folder(out, resume=resume)
        run.write_config(options, config.seed)
        stopped = None
        if roles is not None:
            roles.connect(run.own("ledger.sqlite"), config.budget())
            parts = build_parts(config, roles, objective=objective, proposer=proposer,
                                checks=checks)
            outcome = run_items(
                run, todo, lambda q: _attack(q, config, parts, roles, budgets.get(q.id),
                                             progress),
                item_id=lambda q: q.id, progress=progress, label="questions",
                total=len(questions))
            stopped = outcome.stopped
    finally:
        if roles is not None:
            roles.close()
    ids = {q.id for q in questions}
    records = [r for r in latest_records(run.read_jsonl("results.jsonl")) if r["id"] in ids]
    summary = summarize(records, config)
    summary.update({"stopped": stopped, "seconds": round(time.perf_counter() - start, 3),
                    "files": FILES, "out": str(run.path)})
    run.write_summary(summary)
    return summary


def _attack(q: Question, config: SecaConfig, parts: SecaParts, roles: Roles,
            max_scored: int | None, progress: Progress | None) -> dict[str, Any]:
    """Check eligibility, search (at most ``max_scored`` texts scored; None: no cap), and build
    the question's record."""
    start = time.perf_counter()
    usage_before = roles.usage()
    parse_before = _parse_counts(parts.proposer)
    logp0 = parts.objective.evaluate(q, [q.question])[0]
    target = choose_target(logp0, q.answer)
    record: dict[str, Any] = {
        "id": q.id, "method": config.baseline or "seca", "subject": q.subject,
        "original_question": q.question,
        "choices": list(q.choices), "answer": q.answer, "answer_letter": q.letters[q.answer],
        "objective": parts.objective.name, "predicted": int(np.argmax(logp0)),
        "eligible": target is not None, "target_choice": target,
        "target_letter": None if target is None else q.letters[target],
        "p_correct_before": _p(logp0[q.answer]),
        "p_target_before": None if target is None else _p(logp0[target]),
        # Filled in by the search when the question is eligible:
        "adversarial_question": None, "changed": False, "success": False,
        "p_target_after": None, "p_correct_after": None, "steps": 0, "stopped_early": False,
        "proposals": 0, "unusable_proposals": 0, "unscored": 0, "scored_budget": max_scored,
        "improvers": 0, "feasible": 0,
        "judge_parse_failures": 0, "checks": {}, "trace": []}
    verdicts: list[Verdict] = []
    if target is not None:
        search = seca_search(
            q, objective=parts.objective, proposer=parts.proposer, checks=parts.checks,
            target=target, parents=config.parents, candidates=config.candidates,
            iterations=step_limit(config.iterations, max_scored), original_logp=logp0,
            select=parent_selection(config.baseline), max_scored=max_scored,
            progress=None if progress is None else lambda i, n: progress("search", i, n))
        best = search.best
        verdicts = best.verdicts
        record.update({
            "adversarial_question": best.text, "changed": best is not search.original,
            "success": best.hit,
            "p_target_after": _p(best.logp[target]), "p_correct_after": _p(best.logp[q.answer]),
            "steps": search.steps, "stopped_early": search.stopped_early,
            "proposals": search.proposals, "unusable_proposals": search.unusable,
            "unscored": search.unscored,
            "improvers": search.improvers, "feasible": search.feasible,
            "judge_parse_failures": search.unparsed, "checks": search.checks,
            "trace": search.trace})
    record.update(_verdict_fields(verdicts))
    record["objective_estimate"] = parts.objective.estimate
    record["proposer_parse"] = {k: v - parse_before[k]
                                for k, v in _parse_counts(parts.proposer).items()}
    after = roles.usage()
    queries = {role: {k: after[role][k] - usage_before[role][k] for k in after[role]}
               for role in after}
    record.update({
        "queries": queries,
        "requests": sum(u["requests"] for u in queries.values()),
        "target_requests": queries.get("target", {"requests": 0})["requests"],
        "sent": sum(u["sent"] for u in queries.values()),
        "tokens": sum(u["tokens"] for u in queries.values()),
        "cost": sum(u["cost"] for u in queries.values()),
        "seconds": round(time.perf_counter() - start, 3)})
    return record


PARSE_COUNTS = ("proposals", "json", "fallback", "failed")


def _parse_counts(proposer: Any) -> dict[str, int]:
    """The proposer's reply-parsing counts so far (zeros for a proposer that keeps none)."""
    stats = getattr(proposer, "stats", None)
    counts = stats.to_dict() if stats is not None else {}
    return {k: counts.get(k, 0) for k in PARSE_COUNTS}


def _p(logp: float) -> float:
    return float(math.exp(float(logp)))


def _verdict_fields(verdicts: list[Verdict]) -> dict[str, Any]:
    """Per aspect: the final question's verdicts and whether all passed (None: unchecked)."""
    out: dict[str, Any] = {}
    for aspect in ("equivalence", "coherence", "answer"):
        mine = [v for v in verdicts if v.aspect == aspect]
        out[f"{aspect}_verdicts"] = [v.to_dict() for v in mine]
        out[f"{aspect}_passed"] = all(v.passed for v in mine) if mine else None
    return out


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def summarize(records: list[dict[str, Any]], config: SecaConfig) -> dict[str, Any]:
    """The run's figures from its records.

    ``asr`` = attacked / eligible (attacked: the target option became the top choice). Mean
    queries count requests of all roles (``*_target_*``: the target's only), over eligible
    questions and over successes. Pass rates are per aspect over the candidates the checks saw
    (improvers reaching that check).
    """
    errors = [r for r in records if is_error(r)]
    records = [r for r in records if not is_error(r)]
    eligible = [r for r in records if r["eligible"]]
    wins = [r for r in eligible if r["success"]]
    checks = {a: {"checked": 0, "passed": 0, "parse_failures": 0}
              for a in ("equivalence", "coherence", "answer")}
    for r in records:
        for aspect, counts in r["checks"].items():
            for key, value in counts.items():
                checks[aspect][key] += value
    subjects: dict[str, dict[str, Any]] = {}
    for r in records:
        s = subjects.setdefault(r["subject"], {"questions": 0, "eligible": 0, "attacked": 0})
        s["questions"] += 1
        s["eligible"] += r["eligible"]
        s["attacked"] += r["eligible"] and r["success"]
    for s in subjects.values():
        s["asr"] = _rate(s["attacked"], s["eligible"])
    parse = {k: sum(r["proposer_parse"][k] for r in records) for k in PARSE_COUNTS}
    return {
        "method": config.baseline or "seca",
        "questions": len(records) + len(errors), "errors": len(errors),
        "eligible": len(eligible), "attacked": len(wins),
        "asr": _rate(len(wins), len(eligible)),
        "objective": records[0]["objective"] if records else None,
        "seed": config.seed, "iterations": config.iterations, "parents": config.parents,
        "candidates": config.candidates,
        "mean_queries_per_question": _mean([r["requests"] for r in eligible]),
        "mean_target_queries_per_question": _mean([r["target_requests"] for r in eligible]),
        "mean_queries_per_success": _mean([r["requests"] for r in wins]),
        "mean_target_queries_per_success": _mean([r["target_requests"] for r in wins]),
        "mean_p_target_before": _mean([r["p_target_before"] for r in eligible]),
        "mean_p_target_after": _mean([r["p_target_after"] for r in eligible]),
        "equivalence_pass_rate": _rate(checks["equivalence"]["passed"],
                                       checks["equivalence"]["checked"]),
        "coherence_pass_rate": _rate(checks["coherence"]["passed"],
                                     checks["coherence"]["checked"]),
        "answer_pass_rate": _rate(checks["answer"]["passed"], checks["answer"]["checked"]),
        "checks": checks,
        "judge_parse_failures": sum(r["judge_parse_failures"] for r in records),
        "proposer_parse": parse,
        "requests": sum(r["requests"] for r in records),
        "sent": sum(r["sent"] for r in records),
        "tokens": sum(r["tokens"] for r in records),
        "cost": sum(r["cost"] for r in records),
        "per_subject": dict(sorted(subjects.items())),
        **final_prompt_report(eligible),
    }


def final_prompt_report(eligible: list[dict[str, Any]]) -> dict[str, Any]:
    """How the final rewrites fare under the run's own checks, and every success.

    ``final_equivalence_error_rate`` / ``final_coherence_error_rate``: of the eligible
    questions whose final prompt is a rewrite, the fraction whose verdicts fail that aspect
    (None: no rewrite). ``successes``: per attacked question the original, the rewrite,
    p(target) before and after and the checkers that passed it.
    """
    changed = [r for r in eligible if r["changed"]]
    successes = [{"id": r["id"], "original": r["original_question"],
                  "rewrite": r["adversarial_question"], "target_letter": r["target_letter"],
                  "p_target_before": r["p_target_before"], "p_target_after": r["p_target_after"],
                  "checks": [v["name"] for a in ("equivalence", "coherence", "answer")
                             for v in r[f"{a}_verdicts"]]}
                 for r in eligible if r["success"]]
    return {
        "final_rewrites": len(changed),
        "final_equivalence_error_rate": _rate(
            sum(r["equivalence_passed"] is False for r in changed), len(changed)),
        "final_coherence_error_rate": _rate(
            sum(r["coherence_passed"] is False for r in changed), len(changed)),
        "successes": successes,
    }

