"""The two runs behind ``bbzo unlearn``: ``fit_guard`` (classifier, calibration, strength search:
a guard artifact) and ``evaluate_guard`` (accuracy before/after, classifier error rates, and
with ``metrics="tofu"`` TOFU's forget quality, truth ratio, ROUGE-L and model utility:
``summary.json``). Every model call goes through one ``QueryLayer`` per run with the run's
ledger (``ledger.sqlite``).

Question files are SECA's (``bbzo.attacks.seca.questions``: MMLU-like or TOFU with
``perturbed_answer``). ``fit_guard`` uses a random half of each file (``heldout`` sets the share
left out) and writes the held-out halves as ``heldout_forget.jsonl`` / ``heldout_retain.jsonl``
in the artifact, for ``evaluate_guard``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from bbzo.attacks.seca.questions import Question, load_questions
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.ledger import Ledger
from bbzo.blackbox.targets.base import Target
from bbzo.blackbox.targets.spec import load_target
from bbzo.checks import int_at_least
from bbzo.errors import InputError
from bbzo.runs.folder import RunFolder, check_run_folder
from bbzo.unlearn.calibration import flag_rates
from bbzo.unlearn.corruptions import Corruption
from bbzo.unlearn.evaluate import chance, score, texts
from bbzo.unlearn.guard import (
    CLASSIFIER_FILE,
    GUARD_FILE,
    GUARD_MODES,
    Guard,
    GuardedLM,
    load_guard,
)
from bbzo.unlearn.metrics import MAX_TOKENS, qa_metrics, tofu_report
from bbzo.unlearn.strength import HIGH, LOW, forget_distance, grid_strength, search_strength

LEDGER = "ledger.sqlite"
HELDOUT = {"forget": "heldout_forget.jsonl", "retain": "heldout_retain.jsonl"}
METRIC_SETS = ("accuracy", "tofu")


def load_sets(forget: str | Path, retain: str | Path, seed: int = 0
              ) -> tuple[list[Question], list[Question]]:
    """The forget and retain questions; refused when a question text is in both."""
    f = load_questions(forget, seed=seed)
    r = load_questions(retain, seed=seed)
    both = {q.question for q in f} & {q.question for q in r}
    if both:
        raise InputError(f"{len(both)} question(s) are in both the forget and the retain file "
                         f"(e.g. {sorted(both)[0]!r}); remove them from one")
    return f, r


def split_half(questions: list[Question], heldout: float, seed: int
               ) -> tuple[list[Question], list[Question]]:
    """(fit part, held-out part) of a random split; both non-empty."""
    if len(questions) < 2:
        raise InputError(f"a question file needs at least 2 questions to split into fit and "
                         f"held-out parts, got {len(questions)}")
    order = np.random.default_rng(seed).permutation(len(questions))
    cut = min(max(round(len(questions) * (1 - heldout)), 1), len(questions) - 1)
    return [questions[i] for i in order[:cut]], [questions[i] for i in order[cut:]]


def _write_questions(run: RunFolder, name: str, questions: list[Question]) -> None:
    with run.atomic(name) as tmp:
        tmp.write_text("".join(json.dumps({"id": q.id, "question": q.question,
                                           "choices": list(q.choices), "answer": q.answer,
                                           "subject": q.subject}) + "\n" for q in questions),
                       encoding="utf-8")


def _target(model: str | Target) -> Target:
    return load_target(model) if isinstance(model, str) else model


def fit_guard(model: str | Target, forget: str | Path, retain: str | Path, out: str | Path, *,
              classifier: str = "tfidf", corruption: Corruption | None = None,
              tokens: str = "all_but_last", target_fpr: float = 0.01,
              target_recall: float | None = None, vector: bool = False, search: str = "zo",
              evaluations: int = 16, reference: float | None = None, mode: str = "eco",
              heldout: float = 0.5, start: float = 1.0, lr: float = 1.0,
              seed: int = 0) -> dict:
    """Fit a guard for ``model`` and write it to the artifact folder ``out``.

    Args:
        model: target spec (``hf:<alias-or-folder>``) or a loaded local target.
        forget, retain: question files of the topic to forget and of what to keep.
        classifier: ``tfidf``, ``embedding`` or ``keywords``.
        corruption: the corruption (default ``Corruption("noise_first_k", k=1)``).
        tokens: ``all_but_last`` or ``entities``.
        target_fpr / target_recall: threshold calibration (recall set: split-conformal).
        vector: one strength per dimension instead of one scalar.
        search: ``zo`` (``bbzo.minimize``) or ``grid`` (the baseline), ``evaluations`` each.
        reference: forget accuracy to match (None: chance).
        mode: ``eco`` or ``prefix`` (no strength search).
        heldout: share of each file kept out of fitting.
        start: log10 strength the ZO search starts from.
        lr: its step, in log10 units.
        seed: seeds splits, classifier and search.

    Returns:
        The report written to ``report.json``.
    """
    corruption = corruption or Corruption()
    if search not in ("zo", "grid"):
        raise InputError(f"unknown search {search!r}; choose zo or grid")
    if mode not in ("eco", "prefix"):
        raise InputError(f"a guard is fitted in mode eco or prefix, got {mode!r}")
    if not 0 < heldout < 1:
        raise InputError(f"heldout must be a share in (0, 1), got {heldout!r}")
    check_run_folder(out)
    f_all, r_all = load_sets(forget, retain, seed)
    f_fit, f_held = split_half(f_all, heldout, seed)
    r_fit, r_held = split_half(r_all, heldout, seed)
    lm = _target(model)
    guard = Guard(corruption=corruption, tokens=tokens, mode=mode, model_id=lm.id)
    GuardedLM(lm, guard)  # refuses a model without embeddings in mode eco, before any work
    began = time.perf_counter()
    guard.fit(texts(f_fit), texts(r_fit), classifier=classifier, target_fpr=target_fpr,
              target_recall=target_recall, seed=seed)
    run = RunFolder(out)
    options = {"model": model if isinstance(model, str) else lm.id, "model_id": lm.id,
               "forget": str(forget), "retain": str(retain), "classifier": classifier,
               "corruption": corruption.as_dict(), "tokens": tokens, "target_fpr": target_fpr,
               "target_recall": target_recall, "vector": vector, "search": search,
               "evaluations": evaluations, "reference": reference, "mode": mode,
               "heldout": heldout, "start": start, "lr": lr}
    run.write_config(options, seed)
    for part, questions in (("forget", f_held), ("retain", r_held)):
        _write_questions(run, HELDOUT[part], questions)
    report = {"mode": mode, "classifier": guard.report, "fit_forget": len(f_fit),
              "fit_retain": len(r_fit), "heldout_forget": len(f_held),
              "heldout_retain": len(r_held)}
    if mode == "eco":
        ledger = Ledger(run.own(LEDGER))
        try:
            layer = QueryLayer(GuardedLM(lm), ledger=ledger)
            ref = chance(f_fit) if reference is None else float(reference)
            objective = forget_distance(layer, f_fit, corruption, ref, tokens)
            dims = corruption.dims(lm.input_embeddings().embedding_dim) if vector else 1
            found = (search_strength(objective, dims, start=start, evaluations=evaluations,
                                     lr=lr, seed=seed) if search == "zo"
                     else grid_strength(objective, dims, evaluations=evaluations))
            guard.strength = found.strength
            report["strength_search"] = {**found.as_dict(), "reference": ref,
                                         "model_requests": layer.stats.sent,
                                         "log10_range": [LOW, HIGH]}
            run.write_json("search.json", found.history)
        finally:
            ledger.close()
    report["seconds"] = time.perf_counter() - began
    run.own(GUARD_FILE)
    run.own(CLASSIFIER_FILE)
    guard.save(run.path)
    run.write_json("report.json", report)
    run.write_summary({"mode": mode, "strength": guard.strength, "threshold": guard.threshold,
                       "zo_queries": report.get("strength_search", {}).get("model_requests", 0),
                       "zo_evaluations": report.get("strength_search", {}).get("evaluations", 0),
                       "classifier_fpr_calibration": guard.report.get("fpr"),
                       "classifier_fnr_calibration": guard.report.get("fnr")})
    return report


def load_artifact(folder: str | Path) -> tuple[Guard, dict]:
    """The guard and the fit options (``config.json``) of an artifact folder."""
    folder = Path(folder)
    guard = load_guard(folder)
    try:
        options = json.loads((folder / "config.json").read_text(encoding="utf-8"))["options"]
    except (OSError, ValueError, KeyError):
        raise InputError(f"{folder} has no readable config.json; it is not a 'bbzo unlearn "
                         f"fit' artifact") from None
    return guard, options


def guarded_target(artifact: str | Path, model: str | Target | None = None,
                   mode: str | None = None) -> GuardedLM:
    """The artifact's guard in front of ``model`` (default: the model it was fitted on);
    ``mode`` overrides the guard's (``eco``, ``prefix`` or ``none``)."""
    guard, options = load_artifact(artifact)
    if mode is not None:
        if mode not in GUARD_MODES:
            raise InputError(f"unknown mode {mode!r}; choose one of {', '.join(GUARD_MODES)}")
        guard.mode = mode
    return GuardedLM(_target(model or options["model"]), guard)


def evaluate_guard(artifact: str | Path, forget: str | Path, retain: str | Path,
                   out: str | Path, *, utility: str | Path | None = None,
                   mode: str | None = None, model: str | Target | None = None,
                   metrics: str = "accuracy", reference: str | Target | None = None,
                   max_tokens: int = MAX_TOKENS, seed: int = 0) -> dict:
    """Accuracy on ``forget`` / ``retain`` (/ ``utility``) before and with the guard, and the
    classifier's error rates (forget prompts are the positives; retain and utility prompts
    the negatives). Writes ``summary.json`` into ``out`` and returns it. The model must answer
    ``option_loglik`` requests: an API model (``openai:``) is refused before ``out`` is made.

    ``metrics="tofu"`` adds TOFU's figures (``bbzo.unlearn.metrics.tofu_report``, greedy
    generations of up to ``max_tokens`` tokens) before and with the guard: per set
    ``{set}_probability``, ``{set}_rouge_l``, ``{set}_truth_ratio``; ``model_utility`` over
    retain (and utility); with ``reference`` (the retain model: a spec or a loaded target),
    ``forget_quality``. Per-question truth ratios go to ``tofu.json``.
    """
    if metrics not in METRIC_SETS:
        raise InputError(f"unknown metrics {metrics!r}; choose one of {', '.join(METRIC_SETS)}")
    if reference is not None and metrics != "tofu":
        raise InputError("a reference model is used only by --metrics tofu (forget quality); "
                         "add --metrics tofu or drop the reference")
    int_at_least("max_tokens", max_tokens, 1)
    check_run_folder(out)
    f_q, r_q = load_sets(forget, retain, seed)
    u_q = load_questions(utility, seed=seed) if utility is not None else None
    guarded = guarded_target(artifact, model, mode)
    if "option_loglik" not in guarded.capabilities:
        raise InputError(f"{guarded.lm.id} gives no answer-option log-likelihoods (it answers "
                         f"{', '.join(sorted(guarded.capabilities))}), so accuracy cannot be "
                         f"scored on it; evaluate on a local model (hf:<model>)")
    retain_model = None if reference is None else _target(reference)
    _, fit_options = load_artifact(artifact)
    fit_report = json.loads((Path(artifact) / "report.json").read_text(encoding="utf-8"))
    run = RunFolder(out)
    run.write_config({"artifact": str(artifact), "forget": str(forget), "retain": str(retain),
                      "utility": None if utility is None else str(utility),
                      "mode": guarded.guard.mode, "model_id": guarded.lm.id}, seed)
    ledger = Ledger(run.own(LEDGER))
    try:
        before = QueryLayer(GuardedLM(guarded.lm), ledger=ledger)
        after = QueryLayer(guarded, ledger=ledger)
        sets = {"forget": f_q, "retain": r_q, **({"utility": u_q} if u_q else {})}
        summary: dict = {"mode": guarded.guard.mode, "model_id": guarded.lm.id,
                         "forget_chance": chance(f_q)}
        for name, questions in sets.items():
            summary[f"{name}_accuracy_before"] = score(before, questions).accuracy
            summary[f"{name}_accuracy"] = score(after, questions).accuracy
            summary[f"{name}_questions"] = len(questions)
        g = guarded.guard
        s_pos, s_neg = g.scores(texts(f_q)), g.scores(texts(r_q))
        rates = flag_rates(np.r_[s_pos, s_neg], [1] * len(f_q) + [0] * len(r_q), g.threshold)
        summary.update({"classifier_fpr": rates["fpr"], "classifier_fnr": rates["fnr"]})
        if u_q:  # out-of-domain negatives
            summary["classifier_fpr_utility"] = float((g.scores(texts(u_q)) >= g.threshold).mean())
        search = fit_report.get("strength_search", {})
        summary.update({"strength": g.strength, "threshold": g.threshold,
                        "corruption": g.corruption.as_dict(), "search": fit_options["search"],
                        "zo_queries": search.get("model_requests", 0),
                        "zo_evaluations": search.get("evaluations", 0),
                        "eval_requests": before.stats.sent + after.stats.sent})
        if metrics == "tofu":
            ref_layer = None if retain_model is None else QueryLayer(retain_model,
                                                                     ledger=ledger)
            summary.update(_tofu(run, sets, before, after, ref_layer, max_tokens))
    finally:
        ledger.close()
    run.write_summary(summary)
    return summary


def _tofu(run: RunFolder, sets: dict[str, list[Question]], before: QueryLayer,
          after: QueryLayer, reference: QueryLayer | None, max_tokens: int) -> dict:
    """TOFU figures before (``*_before``) and with the guard; per-question truth ratios to
    ``tofu.json``."""
    utility = [s for s in ("retain", "utility") if s in sets]
    ratios = {}
    if reference is not None:
        ratios["reference"] = qa_metrics(reference, sets["forget"], generate=False).truth_ratio
    figures = {}
    for suffix, layer in (("_before", before), ("", after)):
        found, per_set = tofu_report(layer, sets, utility=utility,
                                     reference=ratios.get("reference"), max_tokens=max_tokens)
        figures.update({f"{k}{suffix}": v for k, v in found.items()})
        ratios[f"guarded{suffix}"] = per_set["forget"].truth_ratio
    run.write_json("tofu.json", {"forget_truth_ratios": {k: v.tolist() for k, v in
                                                         ratios.items()},
                                 "utility_sets": utility, "max_tokens": max_tokens})
    return figures
