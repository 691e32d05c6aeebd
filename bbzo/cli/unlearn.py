"""``bbzo unlearn``: make a deployed LLM behave as if it never learned a topic (ECO:
embedding-corrupted prompts). ``fit`` writes a guard artifact, ``eval`` measures it, ``serve``
puts the guarded model behind the same OpenAI-compatible API as ``bbzo serve``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from bbzo.blackbox.serve import start_server
from bbzo.blackbox.serve.app import DEFAULT_HOST
from bbzo.blackbox.targets.spec import load_target
from bbzo.cli.console import note, print_json
from bbzo.errors import InputError
from bbzo.unlearn.corruptions import NAMES, Corruption
from bbzo.unlearn.guard import GUARD_MODES
from bbzo.unlearn.metrics import MAX_TOKENS
from bbzo.unlearn.run import (
    METRIC_SETS,
    evaluate_guard,
    fit_guard,
    guarded_target,
    load_artifact,
)
from bbzo.unlearn.tokens import MODES

QUESTION_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
ARTIFACT = click.Path(exists=True, file_okay=False, path_type=Path)


def _usage(action: Callable[[], Any]) -> Any:
    """Run ``action``; bad input (``InputError``) is a usage error: one line, exit 2."""
    try:
        return action()
    except InputError as error:
        raise click.UsageError(str(error)) from None


def _k(value: str) -> int | None:
    if value == "all":
        return None
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter(f"must be a positive integer or 'all', got {value!r}")
    return int(value)


@click.group("unlearn")
def unlearn() -> None:
    """Unlearn a topic at inference time: a prompt classifier flags prompts about it and their
    token embeddings are corrupted (ECO), with a strength found by zeroth-order search."""


@unlearn.command("fit")
@click.option("--model", required=True, help="The model to guard (hf:<alias-or-folder>).")
@click.option("--forget", type=QUESTION_FILE, required=True,
              help="Questions about the topic to forget (.jsonl/.csv, MMLU-like or TOFU form).")
@click.option("--retain", type=QUESTION_FILE, required=True,
              help="Questions the model must keep answering.")
@click.option("--classifier", type=click.Choice(["tfidf", "embedding", "keywords"]),
              default="tfidf", show_default=True, help="Prompt classifier.")
@click.option("--corruption", default="noise_first_k", show_default=True,
              help=f"Corruption of flagged prompts: {', '.join(NAMES)}.")
@click.option("--k", "k", default="1", show_default=True,
              help="Dimensions the corruption touches (a number or 'all').")
@click.option("--tokens", type=click.Choice(MODES), default="all_but_last", show_default=True,
              help="Prompt tokens to corrupt.")
@click.option("--target-fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.01, show_default=True,
              help="Share of held-out retain prompts the classifier may flag.")
@click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=None, help="Calibrate by split-conformal to this recall instead.")
@click.option("--vector", is_flag=True, help="One strength per dimension (else one scalar).")
@click.option("--search", type=click.Choice(["zo", "grid"]), default="zo", show_default=True,
              help="Strength search: zeroth-order (bbzo.minimize) or the grid baseline.")
@click.option("--evaluations", type=click.IntRange(min=2), default=16, show_default=True,
              help="Objective evaluations of the strength search (each scores the fit half "
                   "of the forget set once).")
@click.option("--start", type=float, default=1.0, show_default=True,
              help="log10 strength the zo search starts from.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Step of the zo search in log10 strength.")
@click.option("--reference", type=float, default=None,
              help="Forget accuracy to match [default: chance].")
@click.option("--mode", type=click.Choice(["eco", "prefix"]), default="eco", show_default=True,
              help="eco: corrupt embeddings; prefix: a prompt prefix (for models without "
                   "reachable embeddings).")
@click.option("--heldout", type=click.FloatRange(0, 1, min_open=True, max_open=True),
              default=0.5, show_default=True, help="Share of each file left out of fitting.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Artifact folder to write.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
def fit_command(model: str, forget: Path, retain: Path, classifier: str, corruption: str,
                k: str, tokens: str, target_fpr: float, target_recall: float | None,
                vector: bool, search: str, evaluations: int, start: float, lr: float,
                reference: float | None,
                mode: str, heldout: float, out: Path, seed: int) -> None:
    """Fit a guard (classifier, threshold, corruption strength) and write it to --out."""
    width = _k(k)
    report = _usage(lambda: fit_guard(
        model, forget, retain, out, classifier=classifier,
        corruption=Corruption(corruption, width, seed), tokens=tokens, target_fpr=target_fpr,
        target_recall=target_recall, vector=vector, search=search, evaluations=evaluations,
        start=start, lr=lr, reference=reference, mode=mode, heldout=heldout, seed=seed))
    print_json(report)


@unlearn.command("eval")
@click.argument("artifact", type=ARTIFACT)
@click.option("--forget", type=QUESTION_FILE, required=True,
              help="Forget-topic questions (e.g. ARTIFACT/heldout_forget.jsonl).")
@click.option("--retain", type=QUESTION_FILE, required=True,
              help="Retain questions (e.g. ARTIFACT/heldout_retain.jsonl).")
@click.option("--utility", type=QUESTION_FILE, default=None,
              help="Unrelated questions: accuracy and out-of-domain false positives.")
@click.option("--mode", type=click.Choice(GUARD_MODES), default=None,
              help="Override the guard's mode (none = the model unguarded).")
@click.option("--model", default=None, help="The model [default: the artifact's].")
@click.option("--metrics", type=click.Choice(METRIC_SETS), default="accuracy",
              show_default=True,
              help="tofu adds truth ratio, ROUGE-L (greedy generations), model utility and, "
                   "with --reference, forget quality (KS test).")
@click.option("--reference", default=None,
              help="The retain reference model (never trained on the forget set) for forget "
                   "quality (hf:<alias-or-folder>).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=MAX_TOKENS, show_default=True,
              help="Length of the greedy generations scored by ROUGE-L.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run folder.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
def eval_command(artifact: Path, forget: Path, retain: Path, utility: Path | None,
                 mode: str | None, model: str | None, metrics: str, reference: str | None,
                 max_tokens: int, out: Path, seed: int) -> None:
    """Accuracy before/with the guard and classifier error rates (and TOFU's metrics with
    --metrics tofu); writes summary.json."""
    print_json(_usage(lambda: evaluate_guard(artifact, forget, retain, out, utility=utility,
                                             mode=mode, model=model, metrics=metrics,
                                             reference=reference, max_tokens=max_tokens,
                                             seed=seed)))


@unlearn.command("serve")
@click.argument("artifact", type=ARTIFACT)
@click.option("--model", default=None, help="The model [default: the artifact's].")
@click.option("--mode", type=click.Choice(GUARD_MODES), default=None,
              help="Override the guard's mode.")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to bind (0 picks a free one).")
@click.option("--api-key", envvar="BBZO_SERVE_API_KEY", default=None, show_envvar=True,
              help="Require 'Authorization: Bearer <key>'.")
@click.option("--model-name", default=None, help="The only model name clients may send.")
def serve_command(artifact: Path, model: str | None, mode: str | None, host: str, port: int,
                  api_key: str | None, model_name: str | None) -> None:
    """Serve the guarded model behind the OpenAI-compatible API of 'bbzo serve'."""
    def start():
        target = guarded_target(artifact, load_target(model) if model else None, mode)
        return target, start_server(target, host=host, port=port, api_key=api_key or None,
                                    model_name=model_name,
                                    spec=model or load_artifact(artifact)[1]["model"])

    target, handle = _usage(start)
    note(f"serving {target.id} ({target.guard.mode}) as {', '.join(map(repr, handle.names))} "
         f"at {handle.url}; Ctrl-C stops")
    try:
        handle.wait()
    except KeyboardInterrupt:
        note("stopped")
    finally:
        handle.close()
        target.close()
