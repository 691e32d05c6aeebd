"""``bbzo attack``: attacks on models you can only query. ``bbzo attack seca`` runs SECA (or its
random baseline); ``bbzo attack eval`` measures a run's ASR@K."""

from __future__ import annotations

from pathlib import Path

import click

from bbzo.attacks.seca.baseline import BASELINES
from bbzo.attacks.seca.evaluate import evaluate_run
from bbzo.attacks.seca.objective import OBJECTIVES
from bbzo.attacks.seca.proposer import FORMATS
from bbzo.attacks.seca.run import DEFAULT_EMBEDDER, DEFAULT_LM, SecaConfig, run_seca
from bbzo.cli.console import note, print_json, print_table, progress_bars
from bbzo.cli.options import open_run, run_options
from bbzo.runs.reader import read_records

# With the built-in question set and no --limit / --iterations, run a demo that finishes in
# about five minutes on 2 CPU cores (SmolLM2: roughly 15 s per search step).
DEMO_LIMIT = 3
DEMO_ITERATIONS = 5
PAPER_ITERATIONS = 30


def _optional(spec: str | None) -> str | None:
    """``none`` (any case) or an empty string turns a role off."""
    return None if spec is None or spec.strip().lower() in ("", "none") else spec


def _percent(p: float | None) -> str:
    return "-" if p is None else f"{100 * p:.1f}%"


@click.group("attack")
def attack() -> None:
    """Attacks on models you can only query."""


@attack.command("seca")
@click.option("--questions", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Question file (.jsonl or .csv; MMLU-like or TOFU form) "
                                 "[default: the built-in set of 50 general-knowledge questions].")
@click.option("--target", default=DEFAULT_LM, show_default=True,
              help="Model under attack (hf:..., openai:...).")
@click.option("--base-url", default=None, help="Base URL of an OpenAI-compatible server for an "
                                               "openai: target.")
@click.option("--proposer", default=DEFAULT_LM, show_default=True,
              help="Model that writes the rewrites.")
@click.option("--judge", default=None,
              help="LLM judge of equivalence and fluency [default: none; the bundled 135M "
                   "model cannot follow the judge's format].")
@click.option("--embedder", default=DEFAULT_EMBEDDER, show_default=True,
              help="Sentence-embedding model of the equivalence check, or 'none'.")
@click.option("--reference", default=DEFAULT_LM, show_default=True,
              help="Reference LM of the perplexity (coherence) check, or 'none'.")
@click.option("--objective", type=click.Choice(["auto", *OBJECTIVES]), default="auto",
              show_default=True, help="How the target's answer probabilities are read "
                                      "(auto: option if the target scores options, else letter, "
                                      "else sampling).")
@click.option("--proposer-format", type=click.Choice(["auto", *FORMATS]), default="auto",
              show_default=True, help="Proposer prompt (auto: chat for API models, completion "
                                      "for local ones).")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help=f"Most search steps per question [default: {PAPER_ITERATIONS}; "
                   f"{DEMO_ITERATIONS} with the built-in set].")
@click.option("--candidates", type=click.IntRange(min=1), default=3, show_default=True,
              help="M: rewrites per parent per step.")
@click.option("--parents", type=click.IntRange(min=1), default=3, show_default=True,
              help="N: parents kept per step.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help=f"Attack only the first N questions [default: all; {DEMO_LIMIT} with the "
                   f"built-in set].")
@click.option("--budget-queries", type=click.IntRange(min=1), default=None,
              help="Most requests sent to any model in this invocation (ledger answers are "
                   "free).")
@click.option("--max-cost", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Most US dollars spent in this invocation.")
@click.option("--similarity", type=click.FloatRange(0, 1, min_open=True), default=0.9,
              show_default=True, help="Least embedding cosine with the original.")
@click.option("--coherence-ratio", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="Most perplexity as a multiple of the original's.")
@click.option("--samples", type=click.IntRange(min=1), default=10, show_default=True,
              help="Draws per text for --objective sampling.")
@click.option("--rpm", type=click.IntRange(min=1), default=None,
              help="Requests per minute allowed to each API model.")
@click.option("--tpm", type=click.IntRange(min=1), default=None,
              help="Tokens per minute allowed to each API model.")
@click.option("--device", default=None, help="Torch device of local models [default: CUDA if "
                                             "present, else CPU].")
@click.option("--baseline", type=click.Choice(BASELINES), default=None,
              help="Run a baseline instead of SECA: 'random' proposes from the original only "
                   "(best of n random feasible rewrites).")
@click.option("--match", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="With --baseline: score at most as many rewrites per question "
                                 "as this SECA run folder did (equal target queries).")
@run_options
def seca(questions: Path | None, target: str, base_url: str | None, proposer: str,
         judge: str | None, embedder: str, reference: str, objective: str,
         proposer_format: str, iterations: int | None, candidates: int, parents: int,
         limit: int | None, budget_queries: int | None, max_cost: float | None,
         similarity: float, coherence_ratio: float, samples: int, rpm: int | None,
         tpm: int | None, device: str | None, baseline: str | None, match: Path | None,
         out: Path | None, seed: int, resume: bool, json_output: bool) -> None:
    """SECA: rewrite questions so they keep their meaning and read naturally, yet the target
    answers wrongly.

    Writes config.json, results.jsonl (one record per question: the rewrite, probabilities
    before and after, the checks' verdicts, queries and cost per role), summary.json and
    ledger.sqlite (every request and answer; --resume answers them again for free).
    With --baseline random the same files hold the random baseline's results.
    """
    if match is not None and baseline is None:
        raise click.BadParameter("needs --baseline random", param_hint="'--match'")
    demo = questions is None
    config = SecaConfig(
        questions=None if demo else str(questions), target=target, base_url=base_url,
        proposer=proposer, judge=_optional(judge), embedder=_optional(embedder),
        reference=_optional(reference), objective=objective, proposer_format=proposer_format,
        iterations=iterations or (DEMO_ITERATIONS if demo else PAPER_ITERATIONS),
        candidates=candidates, parents=parents, budget_queries=budget_queries,
        max_cost=max_cost, seed=seed, limit=limit or (DEMO_LIMIT if demo else None),
        similarity=similarity, coherence_ratio=coherence_ratio, samples=samples, rpm=rpm,
        tpm=tpm, device=device, baseline=baseline, match=None if match is None else str(match))
    run = open_run(out, resume=resume, command="seca")
    with progress_bars() as progress:
        summary = run_seca(config, out=run, progress=progress)
    if json_output:
        print_json(summary)
    else:
        _table(run.read_jsonl("results.jsonl"), summary, config)
    if summary["stopped"]:
        note(f"stopped before the end: {summary['stopped']}; rerun with --resume to continue")
    note(f"wrote {run.path}: {', '.join(summary['files'])}")


def _table(records: list[dict], summary: dict, config: SecaConfig) -> None:
    rows = []
    for r in records:
        target = r["target_letter"] or "-"
        before, after = _percent(r["p_target_before"]), _percent(r["p_target_after"])
        rewrite = r["adversarial_question"] if r["changed"] else "(unchanged)"
        rows.append((r["id"], r["subject"], "yes" if r["eligible"] else "no", target,
                     f"{before} -> {after}" if r["eligible"] else "-",
                     f"{_percent(r['p_correct_before'])} -> {_percent(r['p_correct_after'])}"
                     if r["eligible"] else _percent(r["p_correct_before"]),
                     "yes" if r["success"] else "no", r["requests"],
                     rewrite if r["eligible"] else "-"))
    asr = summary["asr"]
    method = "SECA" if config.baseline is None else f"{config.baseline.capitalize()} baseline"
    title = (f"{method} on {config.target} ({summary['objective']} objective): attacked "
             f"{summary['attacked']} of {summary['eligible']} eligible "
             f"(ASR {_percent(asr)}), {summary['questions']} questions, seed {config.seed}")
    print_table(title, ["id", "subject", "eligible", "target", "p(target)", "p(correct)",
                        "success", "queries", "rewrite"], rows)
    note(f"equivalence pass rate {_percent(summary['equivalence_pass_rate'])}, coherence "
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
