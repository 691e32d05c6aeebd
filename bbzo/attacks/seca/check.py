"""``check_pairs``: run SECA's equivalence and coherence checks on labelled question pairs, so a
user can audit them before trusting an ASR (``bbzo attack check``).

A pair file is JSONL, one object per line: ``original`` and ``rewrite`` (non-empty strings),
optionally ``equivalent`` (true/false: the user's label), ``choices`` (option texts, for the
option-leak check), ``id`` and ``split`` (a name such as ``calibrate`` or ``heldout``; the
``split`` argument keeps only those pairs).

The checks are built by ``cascade.build_constraints`` from a ``SecaConfig``, exactly as a SECA
run builds them; here every check sees every pair (the search stops at a rewrite's first failed
check, which gives the same pass/fail), so each checker's own precision and recall are reported
too. A pair *passes* when every verdict passed: what a search would count as feasible.

Files written to ``out``: ``.bbzo-run.json``, ``config.json``, ``verdicts.jsonl`` (per pair:
``original``, ``rewrite``, ``label``, ``equivalent``, ``coherent``, ``passed``, ``scores`` by
checker, ``verdicts``), ``summary.json`` (counts, ``precision``/``recall``/confusion of the
whole cascade and per checker when labels are present) and ``ledger.sqlite`` when a model-based
check is on.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bbzo.attacks.seca.cascade import CHECK_ROLES, build_constraints
from bbzo.attacks.seca.constraints import Verdict
from bbzo.attacks.seca.questions import Question
from bbzo.attacks.seca.run import SecaConfig
from bbzo.errors import InputError
from bbzo.runs import RunFolder, as_run_folder, check_run_folder
from bbzo.runs.roles import Roles

FILES = [".bbzo-run.json", "config.json", "verdicts.jsonl", "summary.json"]


def read_pairs(path: str | os.PathLike, split: str | None = None) -> list[dict[str, Any]]:
    """The pairs of a pair file (module doc), checked; only those of ``split`` when given.

    Raises:
        InputError: unreadable or empty file, a line that is not a JSON object, a missing or
            empty ``original``/``rewrite``, a non-boolean ``equivalent``, bad ``choices``, or
            no pair of ``split``.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read pair file {path}: {err}") from None
    pairs = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            pair = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{where} is not JSON ({err.msg}); write one JSON object per "
                             f"line") from None
        if not isinstance(pair, dict):
            raise InputError(f"{where} is not a JSON object; write "
                             f'{{"original": ..., "rewrite": ..., "equivalent": true}}')
        for key in ("original", "rewrite"):
            if not isinstance(pair.get(key), str) or not pair[key].strip():
                raise InputError(f"{where} has no {key!r} text; every pair needs non-empty "
                                 f"'original' and 'rewrite' strings")
        if "equivalent" in pair and not isinstance(pair["equivalent"], bool):
            raise InputError(f"{where}: 'equivalent' must be true or false, got "
                             f"{pair['equivalent']!r}; drop it to leave the pair unlabelled")
        choices = pair.get("choices", [])
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise InputError(f"{where}: 'choices' must be a list of option texts")
        pair.setdefault("id", f"pair{n}")
        pairs.append(pair)
    if not pairs:
        raise InputError(f"pair file {path} holds no pairs; write one JSON object per line")
    if split is not None:
        pairs = [p for p in pairs if p.get("split") == split]
        if not pairs:
            raise InputError(f"pair file {path} has no pair with split {split!r}")
    return pairs


def confusion(passed: list[bool], labels: list[bool]) -> dict[str, Any]:
    """Counts and rates of ``passed`` (the checks' verdicts) against ``labels`` (equivalent):
    a true positive is an equivalent pair that passed. precision = tp / (tp + fp), recall =
    tp / (tp + fn); None when undefined."""
    tp = sum(p and y for p, y in zip(passed, labels, strict=True))
    fp = sum(p and not y for p, y in zip(passed, labels, strict=True))
    fn = sum(not p and y for p, y in zip(passed, labels, strict=True))
    tn = len(labels) - tp - fp - fn
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            "accuracy": (tp + tn) / len(labels) if labels else None}


def verdict_record(pair: dict[str, Any], verdicts: list[Verdict]) -> dict[str, Any]:
    """One line of ``verdicts.jsonl``."""
    def all_passed(aspect: str) -> bool:
        return all(v.passed for v in verdicts if v.aspect == aspect)

    return {"id": pair["id"], "original": pair["original"], "rewrite": pair["rewrite"],
            "label": pair.get("equivalent"), "split": pair.get("split"),
            "equivalent": all_passed("equivalence"), "coherent": all_passed("coherence"),
            "answer_kept": all_passed("answer"), "passed": all(v.passed for v in verdicts),
            "scores": {v.name: v.score for v in verdicts},
            "verdicts": [v.to_dict() for v in verdicts]}


def check_pairs(pairs: str | os.PathLike, *, out: str | os.PathLike | RunFolder,
                config: SecaConfig | None = None, split: str | None = None,
                resume: bool = False) -> dict[str, Any]:
    """Run the checks of ``config`` (default ``SecaConfig()``: the offline checkers, MiniLM
    similarity and SmolLM2 perplexity) on every pair and write ``out`` (module doc).

    Args:
        pairs: the pair file.
        out: run folder; must be empty unless ``resume`` (the ledger then answers again).
        config: the checker settings (``embedder``, ``reference``, ``judge``, ``lexical``,
            ``max_unmatched``, ``similarity``, ``coherence_ratio``, ``judge_max_tokens``,
            ``device``, budgets); the other fields are unused.
        split: keep only the pairs whose ``split`` is this.
        resume: reuse a folder of an earlier call with the same settings.

    Returns:
        The summary (also ``summary.json``).
    """
    config = SecaConfig() if config is None else config
    if not isinstance(config, SecaConfig):
        raise InputError(f"config must be a SecaConfig, got {type(config).__name__}")
    config.validate()
    start = time.perf_counter()
    pairs_path = Path(pairs).expanduser().resolve()
    if not isinstance(out, RunFolder):
        check_run_folder(out, resume=resume)  # before anything is loaded or written
    chosen = read_pairs(pairs_path, split)
    specs = {role: getattr(config, role) for role in CHECK_ROLES}
    options = {"pairs": str(pairs_path), "split": split,
               **{k: v for k, v in asdict(config).items()
                  if k in (*CHECK_ROLES, "lexical", "max_unmatched", "similarity",
                           "coherence_ratio", "judge_max_tokens")}}
    roles = Roles(specs, config.model_settings())  # a bad model spec writes nothing
    try:
        run = as_run_folder(out, resume=resume)
        run.write_config(options, config.seed)
        if roles.specs:
            roles.connect(run.own("ledger.sqlite"), config.budget())
        constraints = build_constraints(
            roles.layers, lexical=config.lexical, max_unmatched=config.max_unmatched,
            similarity=config.similarity, coherence_ratio=config.coherence_ratio,
            judge_max_tokens=config.judge_max_tokens)
        records = []
        for pair in chosen:
            question = Question(str(pair["id"]), pair["original"],
                                tuple(pair.get("choices", ())), 0)
            verdicts = [v for c in constraints for v in c.check(question, [pair["rewrite"]])[0]]
            records.append(verdict_record(pair, verdicts))
        usage = roles.usage()
    finally:
        roles.close()
    with run.atomic("verdicts.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    summary = summarize_verdicts(records, [c.name for c in constraints])
    summary.update({"pairs_file": str(pairs_path), "split": split,
                    "queries": usage, "seconds": round(time.perf_counter() - start, 3),
                    "files": FILES + (["ledger.sqlite"] if roles.specs else []),
                    "out": str(run.path)})
    run.write_summary(summary)
    return summary


def summarize_verdicts(records: list[dict[str, Any]], checkers: list[str]) -> dict[str, Any]:
    """Counts of ``verdicts.jsonl`` records; with labels, the confusion of the whole cascade
    (``passed``), of each aspect and of each checker alone."""
    labelled = [r for r in records if r["label"] is not None]
    labels = [r["label"] for r in labelled]
    out: dict[str, Any] = {
        "pairs": len(records), "labelled": len(labelled),
        "passed": sum(r["passed"] for r in records),
        "equivalence_error_rate": _rate(sum(not r["equivalent"] for r in records), records),
        "coherence_error_rate": _rate(sum(not r["coherent"] for r in records), records),
        "checkers": checkers}
    if labelled:
        out.update(confusion([r["passed"] for r in labelled], labels))
        out["per_checker"] = {}
        names = dict.fromkeys(v["name"] for r in labelled for v in r["verdicts"])
        for name in names:
            passed = [all(v["passed"] for v in r["verdicts"] if v["name"] == name)
                      for r in labelled]
            out["per_checker"][name] = confusion(passed, labels)
    return out


def _rate(part: int, records: list) -> float | None:
    return part / len(records) if records else None
