"""``bbzo defend``: certified robustness for a classifier you can only query (ZO-AE-DS).

Thin commands over ``bbzo.defenses``: ``train-classifier`` (a small CNN to protect),
``train`` (a denoiser / autoencoder defense, first- or zeroth-order), ``certify`` and
``predict`` (Cohen's randomized smoothing through the query layer), ``compare`` (runs side by
side). Bad input (unknown data set, images the black box cannot take, σ ≤ 0, n0 > n, α outside
(0, 1)...) is a usage error: one line, exit 2, nothing written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from bbzo.blackbox.serve.app import DEFAULT_HOST
from bbzo.blackbox.targets.tuned import BACKENDS
from bbzo.cli.console import note, print_json, print_table, progress_bars
from bbzo.cli.options import out_path, run_options
from bbzo.errors import InputError
from bbzo.runs.settings import FieldError


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """Turn a bad-input ``InputError`` (raised before anything is written) into exit 2."""
    try:
        yield
    except FieldError:
        raise
    except InputError as err:
        raise click.UsageError(str(err)) from None


@click.group("defend")
def defend() -> None:
    """Certified robustness for a black-box classifier: train a denoiser (and encoder) in
    front of it with zeroth-order gradients, then certify with randomized smoothing."""


@defend.command("train-classifier")
@click.option("--data", default="mnist5k", show_default=True,
              help="mnist5k, digits, fashion-mnist or an .npz file with x and y.")
@click.option("--epochs", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the classifier (a black-box spec afterwards).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "json_output", is_flag=True, help="Print the summary as JSON.")
def train_classifier_command(data: str, epochs: int, out: Path, seed: int,
                             json_output: bool) -> None:
    """Train a small CNN (plain, not noise-trained) to act as the black box."""
    from bbzo.defenses.training import train_classifier

    with usage_errors(), progress_bars() as progress:
        summary = train_classifier(data=data, epochs=epochs, out=out, seed=seed,
                                   progress=progress)
    if json_output:
        print_json(summary)
    else:
        note(f"validation accuracy {summary['val_accuracy']:.3f}, test accuracy "
             f"{summary['test_accuracy']:.3f}; wrote {out} (use it as --blackbox {out})")


@defend.command("train")
@click.option("--blackbox", required=True, help="Classifier spec: folder, "
              "torch:file.py:factory or http(s)://.../classify.")
@click.option("--data", default="mnist5k", show_default=True)
@click.option("--method", type=click.Choice(["fo-ds", "fo-ae-ds", "zo-ds", "zo-ae-ds"]),
              default="zo-ae-ds", show_default=True)
@click.option("--estimator", type=click.Choice(["rge", "cge"]), default="rge",
              show_default=True)
@click.option("--q", type=int, default=20, show_default=True,
              help="RGE directions per image per step (q + 1 queries).")
@click.option("--mu", type=float, default=0.005, show_default=True)
@click.option("--sigma", type=float, default=0.25, show_default=True)
@click.option("--epochs", type=int, default=5, show_default=True)
@click.option("--batch", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--depth", type=int, default=4, show_default=True, help="Denoiser conv layers.")
@click.option("--width", type=int, default=16, show_default=True,
              help="Denoiser channels.")
@click.option("--latent", type=int, default=48, show_default=True,
              help="Autoencoder latent size (about 16x below the input: 48 for 28x28).")
@click.option("--ae-epochs", type=int, default=5, show_default=True,
              help="Autoencoder pre-training epochs (local).")
@click.option("--denoiser-epochs", type=int, default=1, show_default=True,
              help="Denoiser pre-training epochs (local MSE).")
@click.option("--train-limit", type=int, default=None,
              help="Train on the first N training images only.")
@click.option("--val-limit", type=int, default=200, show_default=True)
@click.option("--autoencoder", default=None,
              help="Start from this pre-trained autoencoder (pretrained_autoencoder.pt of an "
                   "earlier AE run, or its folder) instead of pre-training one.")
@click.option("--max-queries", type=int, default=None,
              help="Most black-box queries this call sends (ledger answers are free); no "
                   "epoch starts that could overrun it.")
@run_options
def train_command(blackbox: str, data: str, out: Path | None, seed: int, resume: bool,
                  json_output: bool, max_queries: int | None, **options: Any) -> None:
    """Train a defense (denoiser, + encoder for *-ae-ds) for a black-box classifier.

    Writes config.json, history.jsonl, checkpoint.pt (every epoch; --resume continues),
    defense.json + denoiser.pt (+ autoencoder.pt): the best epoch on the validation split,
    loss.png, ledger.sqlite and summary.json. The folder is a --model for certify.
    """
    from bbzo.defenses.training import TrainSettings, train_defense

    settings = TrainSettings(**options)  # a FieldError is a usage error on its option
    path = out_path(out, resume=resume, command="defend-train")
    with usage_errors(), progress_bars() as progress:
        summary = train_defense(blackbox, out=path, data=data, settings=settings, seed=seed,
                                resume=resume, max_queries=max_queries, progress=progress)
    if json_output:
        print_json(summary)
        return
    print_table(f"{settings.method} ({settings.estimator})", ["epoch", "loss",
                "val accuracy", "training queries"],
                [[h["epoch"], f"{h['loss']:.4f}", f"{h['val_accuracy']:.3f}", h["queries"]]
                 for h in summary["history"]])
    note(f"{summary['queries_per_image_per_step']} queries per image per step; best epoch "
         f"{summary['best']['epoch']}; wrote {path}")
    if summary["stopped"]:
        note(f"stopped after epoch {summary['epochs_done']} of {summary['epochs']}: "
             f"{summary['stopped']}")


def _smoothing_options(command: Any) -> Any:
    decorators = [
        click.option("--model", required=True,
                     help="A defense folder (bbzo defend train) or a classifier spec (the "
                          "no-denoiser baseline)."),
        click.option("--blackbox", default=None,
                     help="Replace a defense's black box (e.g. the same classifier over "
                          "HTTP)."),
        click.option("--data", default="mnist5k", show_default=True),
        click.option("--split", type=click.Choice(["test", "val", "train"]), default="test",
                     show_default=True),
        click.option("--sigma", type=float, default=None,
                     help="Noise level [default: the defense's training sigma, else 0.25]."),
        click.option("--n", "n", type=int, default=10_000, show_default=True),
        click.option("--alpha", type=float, default=0.001, show_default=True),
        click.option("--limit", type=int, default=None, help="First K images only."),
        click.option("--batch", type=int, default=4096, show_default=True,
                     help="Noisy inputs per query-layer submit (whole blocks of 512); results do "
                          "not depend on it."),
        click.option("--max-queries", type=int, default=None,
                     help="Most black-box queries this call may send."),
        click.option("--backend", type=click.Choice(BACKENDS), default="auto",
                     show_default=True,
                     help="What runs a local classifier's and a defense's forward (auto: ONNX "
                          "Runtime, else TorchScript; summary.json's 'forward' says which)."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def _smooth(mode: str, model: str, blackbox: str | None, data: str, split: str,
            sigma: float | None, n0: int, n: int, alpha: float, limit: int | None,
            batch: int, max_queries: int | None, backend: str, out: Path | None, seed: int,
            resume: bool) -> tuple[dict, Path]:
    from bbzo.defenses.certify import certify_run
    from bbzo.defenses.defense import is_defense, load_defense
    from bbzo.defenses.smoothing import SmoothingSettings

    with usage_errors():
        if sigma is None:
            sigma = load_defense(model).sigma if is_defense(model) else 0.25
        settings = SmoothingSettings(sigma=sigma, n0=n0, n=n, alpha=alpha, batch=batch)
        path = out_path(out, resume=resume, command=f"defend-{mode}")
        with progress_bars() as progress:
            summary = certify_run(model, out=path, data=data, split=split, settings=settings,
                                  limit=limit, max_queries=max_queries, seed=seed,
                                  resume=resume, blackbox=blackbox, mode=mode,
                                  backend=backend, progress=progress)
    return summary, path


def _report(summary: dict, path: Path, json_output: bool) -> None:
    if json_output:
        print_json(summary)
    else:
        acc = summary["certified_accuracy"]
        print_table(f"{summary['mode']}: {summary['images']} images",
                    ["radius", *acc], [["certified accuracy", *(f"{v:.3f}" for v in
                                                                acc.values())]])
        note(f"ACR {summary['acr']:.3f}, abstain rate {summary['abstain_rate']:.3f}, "
             f"{summary['queries_per_image']:.0f} queries and "
             f"{summary['seconds_per_image']:.2f} s per image")
    if summary["stopped"]:
        note(f"stopped before the end: {summary['stopped']}; rerun with --resume")
    note(f"wrote {path}")


@defend.command("certify")
@_smoothing_options
@click.option("--n0", type=int, default=100, show_default=True,
              help="Selection samples of CERTIFY.")
@run_options
def certify_command(json_output: bool, **options: Any) -> None:
    """Cohen's CERTIFY of the smoothed pipeline: certify.jsonl, summary.json (certified
    accuracy by radius, ACR, abstain rate), certified.png, ledger.sqlite."""
    summary, path = _smooth("certify", **options)
    _report(summary, path, json_output)


@defend.command("predict")
@_smoothing_options
@run_options
def predict_command(json_output: bool, **options: Any) -> None:
    """Cohen's PREDICT (abstains when the top two classes are not told apart at alpha)."""
    summary, path = _smooth("predict", n0=1, **options)
    _report(summary, path, json_output)


@defend.command("compare")
@click.argument("runs", nargs=-1, required=True,
                type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the overlaid curves to this PNG.")
@click.option("--json", "json_output", is_flag=True)
def compare_command(runs: tuple[Path, ...], plot: Path | None, json_output: bool) -> None:
    """Certify runs side by side: one table (and one plot)."""
    from bbzo.defenses.certify import compare

    with usage_errors():
        rows = compare(list(runs), plot=plot)
    if json_output:
        print_json(rows)
        return
    columns = list(rows[0])
    print_table("certified accuracy", columns,
                [[f"{r[c]:.3f}" if isinstance(r[c], float) else r[c] for c in columns]
                 for r in rows])


@click.command("serve-classifier")
@click.argument("model")
@click.option("--host", default=DEFAULT_HOST, show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8100, show_default=True)
def serve_classifier_command(model: str, host: str, port: int) -> None:
    """Serve a classifier (folder or torch:file.py:factory) at http://HOST:PORT/classify."""
    from bbzo.blackbox.serve.classifier import start_classifier_server
    from bbzo.blackbox.targets.spec import load_target

    with usage_errors():
        server = start_classifier_server(load_target(model), host=host, port=port)
    note(f"serving {model} at {server.url}; Ctrl-C stops")
    try:
        server.wait()
    finally:
        server.close()
