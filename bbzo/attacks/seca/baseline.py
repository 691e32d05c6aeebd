"""The random feasible-rephrasing baseline: what SECA's objective-guided search is measured
against.

It runs through ``run_seca`` (``SecaConfig(baseline="random")``, ``bbzo attack seca --baseline
random``) with the same proposer, objective and checks, and writes the same files, so the two
runs compare field by field. The one difference: every step proposes from N copies of the
original question, never from earlier rewrites, so the objective never chooses what is
proposed. Each rewrite is still scored (one target query per text, as in SECA); the scores only
pick which rewrites go to the checks (those beating the best so far) and which feasible one is
reported: best of n random feasible rephrasings.

Equal budget: by default the same iterations x parents x candidates. With ``match`` (a SECA run
folder), each question may score at most as many texts as SECA scored on it there, so with the
same objective both spend the same target queries per question (SECA's early stop included).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from bbzo.attacks.seca.questions import Question
from bbzo.errors import InputError

BASELINES = ("random",)


def _read_run(folder: Path) -> tuple[dict, list[dict]]:
    """``config.json`` options and ``results.jsonl`` records of a run folder, read without
    touching it (it may still be running)."""
    try:
        options = json.loads((folder / "config.json").read_text(encoding="utf-8"))["options"]
        lines = (folder / "results.jsonl").read_text(encoding="utf-8").splitlines()
    except (OSError, KeyError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read the SECA run to match in {folder}: {err}; give the --out "
                         f"folder of a 'bbzo attack seca' run") from None
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a record torn by a crash: that question is missing below
    return options, records


def matched_budgets(match: str | Path, questions: Sequence[Question], target: str,
                    objective: str) -> dict[str, int]:
    """Texts SECA scored per question id in the run folder ``match`` (proposals minus the
    unusable and unscored ones), checked comparable: same target and objective, and every
    question present with the same text, options and answer."""
    folder = Path(match)
    options, records = _read_run(folder)
    if options.get("baseline") is not None:
        raise InputError(f"{folder} is a {options['baseline']} baseline run; match a SECA run")
    for name, mine in (("target", target), ("objective", objective)):
        if options.get(name) != mine:
            raise InputError(f"the run to match in {folder} used {name} {options.get(name)!r}, "
                             f"this run {mine!r}; use the same {name}")
    found = {r["id"]: r for r in records}
    budgets = {}
    for q in questions:
        r = found.get(q.id)
        if r is None or r.get("error") is not None:
            raise InputError(f"question {q.id!r} is not in the run to match ({folder}); finish "
                             f"that run (--resume, --retry-errors) or lower --limit")
        if (r["original_question"], r["choices"], r["answer"]) != \
                (q.question, list(q.choices), q.answer):
            raise InputError(f"question {q.id!r} differs from the run to match ({folder}); use "
                             f"the same --questions file and --seed")
        budgets[q.id] = r["proposals"] - r["unusable_proposals"] - r.get("unscored", 0)
    return budgets
