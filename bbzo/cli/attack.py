"""``bbzo attack``: attacks on models you can only query. ``bbzo attack seca`` runs SECA (or its
random baseline); ``bbzo attack eval`` measures a run's ASR@K."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import click

from bbzo.attacks.seca.baseline import BASELINES
from bbzo.attacks.seca.check import check_pairs
from bbzo.attacks.seca.evaluate import evaluate_run
from bbzo.attacks.seca.objective import OBJECTIVES
from bbzo.attacks.seca.proposer import FORMATS
from bbzo.attacks.seca.run import (
    DEMO_ITERATIONS,
    DEMO_LIMIT,
    PRESETS,
    PROPOSER_MODES,
    SecaConfig,
    run_seca,
)
from bbzo.cli.console import note, print_json, print_table, progress_bars
from bbzo.cli.options import config_option, given, out_path, run_options
from bbzo.runs.driver import is_error, latest_records
from bbzo.runs.folder import read_jsonl_file
from bbzo.runs.reader import read_records

ROLE_OPTIONS = ("judge", "embedder", "reference")  # 'none' turns these roles off


def _optional(spec: str) -> str | None:
    """``none`` (any case) or an empty string turns a role off."""
    return None if spec.strip().lower() in ("", "none") else spec


def _percent(p: float | None) -> str:
    return "-" if p is None else f"{100 * p:.1f}%"


@click.group("attack")
def attack() -> None:
    """Attacks on models you can only query."""


def _checker_options() -> list[Any]:
    """The options of the equivalence and coherence checks (``attack seca`` and
    ``attack check``)."""
    option = functools.partial(config_option, SecaConfig)
    return [
        click.option("--lexical/--no-lexical", "lexical", default=None,
                     help="Run the offline checkers (content alignment, negation/antonyms, "
                          "qualifiers, repetition, agreement) [default: on]."),
        option("max_unmatched", type=click.INT,
               help="Most content words a rewrite may add or drop without a near-synonym."),
        option("similarity", type=click.FLOAT, help="Least embedding cosine with the original."),
        option("judge", help="LLM judge of equivalence and fluency (the bundled 135M model "
                             "cannot follow the judge's format)."),
        option("embedder", help="Sentence-embedding model of the equivalence check, or "
                                "'none'."),
        option("reference", help="Reference LM of the perplexity (coherence) check, or "
                                 "'none'."),
        option("coherence_ratio", type=click.FLOAT,
               help="Most perplexity as a multiple of the original's."),
    ]


def _config_changes(options: dict[str, Any]) -> dict[str, Any]:
    """The ``SecaConfig`` fields given on the command line, paths as strings and 'none' roles
    as None."""
    changes = given(options, SecaConfig)
    for name in ("questions", "match"):
        if name in changes:
            changes[name] = str(changes[name])
    for name in ROLE_OPTIONS:
        if name in changes:
            changes[name] = _optional(changes[name])
    return changes


def _checker_decorators(command: Any) -> Any:
    """Apply ``_checker_options`` to a command."""
    for decorator in reversed(_checker_options()):
        command = decorator(command)
    return command


def _seca_options(command: Any) -> Any:
    """The ``bbzo attack seca`` options of ``SecaConfig``'s fields, defaults from the class."""
    option = functools.partial(config_option, SecaConfig)
    decorators = [
        option("questions", type=click.Path(exists=True, dir_okay=False, path_type=Path),
               default_text="the built-in set of 50 general-knowledge questions",
               help="Question file (.jsonl or .csv; MMLU-like or TOFU form)."),
        option("target", help="Model under attack (hf:..., openai:...)."),
        option("base_url", help="Base URL of an OpenAI-compatible server for an openai: "
                                "target."),
        option("proposer", help="Model that writes the rewrites, or 'rules' for the offline "
                                "rules proposer alone."),
        option("proposer_mode", type=click.Choice(PROPOSER_MODES),
               help="llm (the proposer model), rules (offline question-form and framing "
                    "transformations, synonym swaps), hybrid (both) or auto (llm for API "
                    "proposers, hybrid for local ones)."),
        option("objective", type=click.Choice(["auto", *OBJECTIVES]),
               help="How the target's answer probabilities are read (auto: option if the "
                    "target scores options, else letter, else sampling)."),
        option("proposer_format", type=click.Choice(["auto", *FORMATS]),
               help="Proposer prompt (auto: chat for API models, completion for local ones)."),
        option("iterations", type=click.INT, help="Most search steps per question."),
        option("candidates", type=click.INT, help="M: rewrites per parent per step."),
        option("parents", type=click.INT, help="N: parents kept per step."),
        option("limit", type=click.INT, default_text="all",
               help="Attack only the first N questions."),
        option("budget_queries", type=click.INT,
               help="Most requests sent to any model in this invocation (ledger answers are "
                    "free)."),
        option("max_cost", type=click.FLOAT, help="Most US dollars spent in this invocation."),
        *_checker_options(),
        option("samples", type=click.INT, help="Draws per text for --objective sampling."),
        option("rpm", type=click.INT, help="Requests per minute allowed to each API model."),
        option("tpm", type=click.INT, help="Tokens per minute allowed to each API model."),
        option("device", default_text="CUDA if present, else CPU",
               help="Torch device of local models."),
        option("baseline", type=click.Choice(BASELINES), default_text="none: SECA",
               help="Run a baseline instead of SECA: 'random' proposes from the original "
                    "only (best of n random feasible rewrites)."),
        option("match", type=click.Path(exists=True, file_okay=False, path_type=Path),
               help="With --baseline: score at most as many rewrites per question as this SECA "
                    "run folder did (equal target queries)."),
        click.option("--preset", type=click.Choice(sorted(PRESETS)), default="paper",
                     show_default=True,
                     help=f"Starting settings that the options above change: paper "
                          f"(SecaConfig()) or demo (first {DEMO_LIMIT} questions, "
                          f"{DEMO_ITERATIONS} steps: SecaConfig.demo())."),
        click.option("--retry-errors", is_flag=True,
                     help="With --resume: attack again the questions recorded with an error."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


@attack.command("seca")
@_seca_options
@run_options
def seca(preset: str, retry_errors: bool, out: Path | None, seed: int, resume: bool,
         json_output: bool, **options: Any) -> None:
    """SECA: rewrite questions so they keep their meaning and read naturally, yet the target
    answers wrongly.

    Writes .bbzo-run.json (the manifest), config.json, results.jsonl (one record per question:
    the rewrite, probabilities before and after, the checks' verdicts, queries and cost per
    role; or the question's error), summary.json and ledger.sqlite (every request and answer;
    --resume answers them again for free). With --baseline random the same files hold the
    random baseline's results. Nothing is written before every option, file and model checks
    out.
    """
    config = PRESETS[preset](**_config_changes(options), seed=seed)
    config.validate()  # a FieldError is a usage error on its option (bbzo.cli.main)
    path = out_path(out, resume=resume, command="seca")
    with progress_bars() as progress:
        summary = run_seca(config, out=path, resume=resume, retry_errors=retry_errors,
                           progress=progress)
    if json_output:
        print_json(summary)
    else:
        records = latest_records(read_jsonl_file(path / "results.jsonl"))
        _table(records, summary, config)
    if summary["errors"]:
        note(f"{summary['errors']} question(s) failed (the 'error' field of results.jsonl); "
             f"rerun with --resume --retry-errors to try them again")
    if summary["stopped"]:
        note(f"stopped before the end: {summary['stopped']}; rerun with --resume to continue")
    note(f"wrote {path}: {', '.join(summary['files'])}")


def _verdict_cell(record: dict) -> str:
    """``equivalent``/``coherent`` verdicts of a final rewrite: ``eq ok coh ok``, or the names
    of the checks it failed."""
    failed = [v["name"] for a in ("equivalence", "coherence", "answer")
              for v in record[f"{a}_verdicts"] if not v["passed"]]
    if failed:
        return "failed " + ", ".join(failed)
    parts = [f"{short} {'ok' if record[f'{a}_passed'] else '-'}"
             for a, short in (("equivalence", "eq"), ("coherence", "coh"))
             if record[f"{a}_passed"] is not None]
    return " ".join(parts) or "unchecked"


def _table(records: list[dict], summary: dict, config: SecaConfig) -> None:
    rows = []
    for r in records:
        if is_error(r):
            rows.append((r["id"], "-", "-", "-", "-", "-", "error", "-", "-", r["error"]))
            continue
        target = r["target_letter"] or "-"
        before, after = _percent(r["p_target_before"]), _percent(r["p_target_after"])
        rewrite = r["adversarial_question"] if r["changed"] else "(unchanged)"
        rows.append((r["id"], r["subject"], "yes" if r["eligible"] else "no", target,
                     f"{before} -> {after}" if r["eligible"] else "-",
                     f"{_percent(r['p_correct_before'])} -> {_percent(r['p_correct_after'])}"
                     if r["eligible"] else _percent(r["p_correct_before"]),
                     "yes" if r["success"] else "no", r["requests"],
                     _verdict_cell(r) if r["eligible"] and r["changed"] else "-",
                     rewrite if r["eligible"] else "-"))
    asr = summary["asr"]
    method = "SECA" if config.baseline is None else f"{config.baseline.capitalize()} baseline"
    title = (f"{method} on {config.target} ({summary['objective']} objective): attacked "
             f"{summary['attacked']} of {summary['eligible']} eligible "
             f"(ASR {_percent(asr)}), {summary['questions']} questions, seed {config.seed}")
    print_table(title, ["id", "subject", "eligible", "target", "p(target)", "p(correct)",
                        "success", "queries", "verdicts", "rewrite"], rows)
    note(f"final rewrites ({summary['final_rewrites']}): equivalence errors "
         f"{_percent(summary['final_equivalence_error_rate'])}, coherence errors "
         f"{_percent(summary['final_coherence_error_rate'])}; candidates checked: "
         f"equivalence pass rate {_percent(summary['equivalence_pass_rate'])}, coherence "
         f"{_percent(summary['coherence_pass_rate'])} (over checked candidates); "
         f"{summary['sent']} requests sent, {summary['tokens']} tokens, "
         f"${summary['cost']:.4f}")


@attack.command("eval")
@click.argument("run_dir", metavar="RUN", type=click.Path(exists=True, file_okay=False,
                                                          path_type=Path))
@click.option("--judge", required=True, help="Evaluation judge (hf:..., openai:...); keep it "
                                             "apart from the search's judge.")
@click.option("--k", "k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Answers sampled per question.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the sampled answers.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=200, show_default=True,
              help="Most tokens per answer (the letter and its reason).")
@click.option("--budget-queries", type=click.IntRange(min=1), default=None,
              help="Most requests sent in this invocation (ledger answers are free).")
@click.option("--max-cost", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Most US dollars spent in this invocation.")
@click.option("--device", default=None, help="Torch device of local models [default: the "
                                             "run's].")
@click.option("--json", "json_output", is_flag=True,
              help="Print the summary as JSON on stdout instead of a table.")
def evaluate(run_dir: Path, judge: str, k: int, seed: int, max_tokens: int,
             budget_queries: int | None, max_cost: float | None, device: str | None,
             json_output: bool) -> None:
    """ASR@K of a SECA or baseline run: K answers per eligible question's best prompt at
    temperature 1; a trial succeeds when its letter is the target letter and the judge calls
    the answer a hallucination.

    Writes eval.jsonl and eval_summary.json into RUN; every request goes through RUN's ledger,
    so running it again (or with a larger --k) re-sends nothing already answered.
    """
    with progress_bars() as progress:
        summary = evaluate_run(run_dir, judge=judge, k=k, seed=seed, max_tokens=max_tokens,
                               budget_queries=budget_queries, max_cost=max_cost, device=device,
                               progress=progress)
    if json_output:
        print_json(summary)
    else:
        _eval_table(summary, run_dir)
    if summary["judge_is_search_judge"]:
        note("the evaluation judge is the search's judge, which the search may have gamed; "
             "prefer another model")
    note(f"wrote {run_dir}: {', '.join(summary['files'])}")


def _eval_table(summary: dict, run_dir: Path) -> None:
    rows = []
    for e in read_records(run_dir / "eval.jsonl")[0]:
        rows.append((e["id"], e["target_letter"], " ".join(x or "?" for x in e["letters"]),
                     e["letter_hits"], e["hallucinations"], e["judge_parse_failures"],
                     "yes" if e["attacked"] else "no"))
    k = summary["k"]
    print_table(f"ASR@{k} of {summary['method']} on {summary['target']} (judge "
                f"{summary['judge']}): {summary['attacked']} of {summary['eligible']} eligible "
                f"attacked (ASR@{k} {_percent(summary['asr_at_k'])})",
                ["id", "target", "letters", "hits", "hallucinations", "judge unparsed",
                 "attacked"], rows)
    note(f"letter-hit rate {_percent(summary['letter_hit_rate'])} of {summary['trials']} trials, "
         f"{summary['unparsed_letters']} answers without a letter, "
         f"{summary['judge_parse_failures']} judge replies unparsed; {summary['sent']} requests "
         f"sent, ${summary['cost']:.4f}")


@attack.command("check")
@click.argument("pairs", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--split", default=None, help="Check only the pairs whose 'split' field is this "
                                            "(e.g. heldout) [default: all].")
@config_option(SecaConfig, "device", default_text="CUDA if present, else CPU",
               help="Torch device of local models.")
@config_option(SecaConfig, "judge_max_tokens", type=click.INT,
               help="Most tokens of the judge's answer.")
@_checker_decorators
@run_options
def check(pairs: Path, split: str | None, out: Path | None, seed: int, resume: bool,
          json_output: bool, **options: Any) -> None:
    """Audit SECA's equivalence and coherence checks on labelled pairs: PAIRS is JSONL with
    "original", "rewrite" and optionally "equivalent" (true/false) on each line.

    Runs exactly the checks 'bbzo attack seca' would run with the same options and writes
    verdicts.jsonl (each pair's verdicts and every checker's score) and summary.json
    (precision, recall and the confusion counts of the whole cascade and of each checker,
    when labels are present).
    """
    config = SecaConfig(**_config_changes(options), seed=seed)
    config.validate()
    path = out_path(out, resume=resume, command="check")
    summary = check_pairs(pairs, out=path, config=config, split=split, resume=resume)
    if json_output:
        print_json(summary)
    else:
        _check_table(summary)
    note(f"wrote {path}: {', '.join(summary['files'])}")


def _check_table(summary: dict) -> None:
    title = (f"Checks on {summary['pairs']} pairs ({summary['labelled']} labelled): "
             f"{summary['passed']} passed")
    if not summary["labelled"]:
        print_table(title, ["pairs", "passed", "equivalence errors", "coherence errors"],
                    [(summary["pairs"], summary["passed"],
                      _percent(summary["equivalence_error_rate"]),
                      _percent(summary["coherence_error_rate"]))])
        return
    rows = [("all checks (cascade)", *_confusion_cells(summary))]
    rows += [(name, *_confusion_cells(c)) for name, c in summary["per_checker"].items()]
    print_table(title, ["checker", "precision", "recall", "tp", "fp", "fn", "tn"], rows)


def _confusion_cells(c: dict) -> tuple:
    return (_percent(c["precision"]), _percent(c["recall"]), c["tp"], c["fp"], c["fn"], c["tn"])
