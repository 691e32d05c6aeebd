"""The random feasible-rephrasing baseline: what SECA's objective-guided search is measured
against.

It runs through ``run_seca`` (``SecaConfig(baseline="random")``, ``bbzo attack seca --baseline
random``) with the same proposer, objective and checks, and writes the same files, so the two
runs compare field by field. The one difference is the parent-selection strategy of the
population search (``parent_selection``): every step proposes from N copies of the original
question (``initial_parents``), never from earlier rewrites, so the objective never chooses what
is proposed. Each rewrite is still scored (one target query per text, as in SECA); the scores only
pick which rewrites go to the checks (those beating the best so far) and which feasible one is
reported: best of n random feasible rephrasings.

Equal budget: by default the same iterations x parents x candidates. With ``match`` (a SECA run
folder), each question scores as many texts as SECA scored on it there, so with the same
objective both spend the same target queries per question (SECA's early stop included). Its
proposals may be unusable at another rate than SECA's (rewrites of the original vs of the
best rewrites), so a matched baseline may take up to ``MATCHED_STEPS`` times the iterations to
spend that budget, never more texts; it stops early only when the target option wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bbzo.attacks.seca.questions import Question
from bbzo.blackbox.zo.population import Selection, elite_parents, initial_parents
from bbzo.errors import InputError
from bbzo.runs.reader import check_fields, read_run, show

STRATEGIES: dict[str, Selection] = {"random": initial_parents}
BASELINES = tuple(STRATEGIES)
MATCHED_STEPS = 3  # most iterations of a matched baseline, as a multiple of SECA's


def step_limit(iterations: int, max_scored: int | None) -> int:
    """Most search steps of a question: ``iterations``, or ``MATCHED_STEPS`` times as many when
    a matched budget (``max_scored`` texts) is what ends the search."""
    return iterations if max_scored is None else MATCHED_STEPS * iterations


def parent_selection(baseline: str | None) -> Selection:
    """The parent selection of a run: SECA's own (``elite_parents``) for None, else the
    baseline's (``random``: ``initial_parents``)."""
    if baseline is None:
        return elite_parents
    if baseline not in STRATEGIES:
        raise InputError(f"baseline must be one of {', '.join(map(repr, BASELINES))} or None, "
                         f"got {baseline!r}")
    return STRATEGIES[baseline]


# Fields of a SECA results.jsonl record that matching reads, with their JSON types.
MATCH_FIELDS = {"id": (str,), "original_question": (str,), "choices": (list,), "answer": (int,),
                "proposals": (int,), "unusable_proposals": (int,)}


def _check_record(record: dict, where: str) -> None:
    check_fields(record, MATCH_FIELDS, where)
    if "unscored" in record:
        check_fields(record, {"unscored": (int,)}, where)


def matched_budgets(match: str | Path, questions: Sequence[Question], target: str,
                    objective: str) -> dict[str, int]:
    """Texts SECA scored per question id in the run folder ``match`` (proposals minus the
    unusable and unscored ones), checked comparable: same target and objective, and every
    question present with the same text, options and answer. The folder is only read (it may
    still be running: a record being written is left out)."""
    view = read_run(match, check=_check_record, hint="cannot read the SECA run to match; give "
                    "--match the --out folder of a 'bbzo attack seca' run")
    folder, options, records = view.path, view.options, view.records
    kind = options.get("baseline")
    if kind is not None:
        raise InputError(f"{folder} is a {kind if kind in BASELINES else show(kind)} baseline "
                         f"run; match a SECA run")
    for name, mine in (("target", target), ("objective", objective)):
        if options.get(name) != mine:
            raise InputError(f"the run to match in {folder} used {name} {show(options.get(name))}, "
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
