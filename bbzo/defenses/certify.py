"""Certification runs: CERTIFY (or PREDICT) every image of a split into a run folder.

``certify_run`` writes ``certify.jsonl`` (``predict.jsonl`` for PREDICT; one record per image:
``index``, ``label``, ``prediction``, ``radius``, ``correct``, ``abstain``, ``seconds``,
``queries``), ``summary.json`` (certified accuracy by radius, ACR, abstain rate, the largest
certifiable radius for n, α, σ, totals), ``certified.png`` and the run's ``ledger.sqlite``.
Noisy inputs go through the query layer in ledgered blocks (``bbzo.defenses.smoothing``), each
input counted as one query; an interrupted run resumes with ``resume=True`` without re-sending
a completed block (``sent_this_call`` / ``cached_this_call``: noisy inputs the black box
classified / the ledger answered, the layer's ``LayerStats.queries`` / ``cached_queries``). A
local torch classifier runs tuned (``TorchClassifier.tune``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.ledger import Ledger
from bbzo.blackbox.targets.base import Target
from bbzo.blackbox.targets.classifier import TorchClassifier
from bbzo.blackbox.targets.tuned import BACKENDS
from bbzo.defenses.data import check_name, load_dataset
from bbzo.defenses.defense import Defense, resolve_model
from bbzo.defenses.smoothing import SmoothedClassifier, SmoothingSettings, max_certifiable_radius
from bbzo.errors import InputError
from bbzo.plots import plot_panels
from bbzo.runs import RunFolder, check_run_folder, latest_records, pending, run_items
from bbzo.runs.reader import read_records

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
MODES = ("certify", "predict")
Progress = Callable[[str, int, int], None]


def results_name(mode: str) -> str:
    return f"{mode}.jsonl"


def check_fits(target: Target, defense: Defense | None, image: np.ndarray) -> None:
    """Classify one clean image through a ledger-less layer; a wrong input shape or an answer
    without probabilities becomes a one-line ``InputError`` (before anything is written)."""
    probe = SmoothedClassifier(QueryLayer(target), SmoothingSettings(n0=1, n=1, batch=1),
                               preprocess=None if defense is None else defense.preprocess)
    try:
        probe.classify(image[None].astype(np.float32))
    except Exception as err:  # noqa: BLE001 - any failure here is a mismatch to report
        message = " ".join(str(err).split())[:300]
        raise InputError(f"the black box {target.id} cannot classify images of shape "
                         f"{tuple(image.shape)} into class probabilities ({message}); give a "
                         f"classifier for this data set that returns probabilities") from None


def certified_accuracy(records: Sequence[dict], radii: Sequence[float]) -> dict[str, float]:
    """Fraction of images certified correct at radius ≥ r, for each r (as string keys)."""
    n = max(len(records), 1)
    return {f"{r:g}": sum(1 for x in records if x["correct"] and x["radius"] >= r) / n
            for r in radii}


def summarize(records: Sequence[dict], settings: SmoothingSettings, mode: str) -> dict:
    """The run's summary from its per-image records (module doc)."""
    n = max(len(records), 1)
    return {
        "mode": mode,
        "images": len(records),
        "certified_accuracy": certified_accuracy(records, RADII),
        "accuracy": sum(1 for x in records if x["correct"]) / n,
        "acr": sum(x["radius"] for x in records if x["correct"]) / n,
        "abstain_rate": sum(1 for x in records if x["abstain"]) / n,
        "max_certifiable_radius": max_certifiable_radius(settings.n, settings.alpha,
                                                         settings.sigma),
        "queries": sum(x["queries"] for x in records),
        "queries_per_image": sum(x["queries"] for x in records) / n,
        "seconds": sum(x["seconds"] for x in records),
        "seconds_per_image": sum(x["seconds"] for x in records) / n,
    }


def curve(records: Sequence[dict], points: int = 101) -> tuple[list[float], list[float]]:
    """Certified accuracy against radius, from 0 to past the largest radius."""
    top = max([1.0, *(x["radius"] for x in records)])
    radii = [float(r) for r in np.linspace(0.0, top, points)]
    return radii, list(certified_accuracy(records, radii).values())


def certify_run(model: str, *, out: str | Path, data: str = "mnist5k", split: str = "test",
                settings: SmoothingSettings | None = None, limit: int | None = None,
                max_queries: int | None = None, seed: int = 0, resume: bool = False,
                blackbox: str | None = None, mode: str = "certify", backend: str = "auto",
                progress: Progress | None = None) -> dict[str, Any]:
    """CERTIFY (``mode="certify"``) or PREDICT every image of ``split`` (the first ``limit``).

    Args:
        model: a defense folder (``bbzo defend train``) or a classifier spec (folder,
            ``torch:file.py:factory``, ``http(s)://``): the no-denoiser baseline.
        out: the run folder.
        data: data set name or .npz file (``bbzo.defenses.data``).
        settings: σ, n0, n, α, batch (default ``SmoothingSettings()``; σ defaults to the
            defense's training σ when None is given for a defense).
        max_queries: most noisy inputs sent by this call (ledger answers are free).
        blackbox: replaces a defense's black-box spec.
        backend: what compiles a local classifier's and a defense's forward
            (``TunedForward``: ``auto``, ``onnxruntime`` or ``torchscript``); what ran is the
            summary's ``forward``.
    Returns:
        The summary (also in ``summary.json``).
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    settings = settings or SmoothingSettings()
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit must be a positive integer, got {limit!r}")
    if max_queries is not None and (not isinstance(max_queries, int) or max_queries < 1):
        raise InputError(f"max_queries must be a positive integer, got {max_queries!r}")
    check_name(data)
    dataset = load_dataset(data)
    images = dataset.split(split)
    check_run_folder(out, resume=resume)
    target, defense = resolve_model(model, blackbox=blackbox, max_batch=settings.batch)
    if isinstance(target, TorchClassifier):
        target.tune = True
        target.runner.backend = backend
    check_fits(target, defense, images.x[0])
    count = len(images) if limit is None else min(limit, len(images))
    # What decides the results; the batch size and the budget may change on a resume.
    decisive = {k: v for k, v in settings.to_dict().items() if k != "batch"}
    options = {"model": str(model), "blackbox": blackbox, "data": dataset.describe(),
               "split": split, "limit": count, "mode": mode, **decisive}
    run = RunFolder(out, resume=resume)
    run.write_config(options, seed)
    results = results_name(mode)
    preprocess = None if defense is None else defense.fast_preprocess(backend=backend)
    try:
        with Ledger(run.own("ledger.sqlite")) as ledger:
            layer = QueryLayer(target, ledger=ledger, budget=max_queries)  # queries: noisy inputs
            smoothed = SmoothedClassifier(layer, settings, preprocess=preprocess, seed=seed)
            act = smoothed.certify if mode == "certify" else smoothed.predict

            def work(i: int) -> dict:
                start = time.perf_counter()
                cert = act(images.x[i], i)
                label = int(images.y[i])
                return {"id": i, "index": i, "label": label, "prediction": cert.prediction,
                        "radius": cert.radius, "correct": cert.prediction == label,
                        "abstain": cert.prediction is None, "top_count": cert.top_count,
                        "seconds": time.perf_counter() - start, "queries": cert.queries}

            todo = pending(list(range(count)), lambda i: i, run.read_jsonl(results))
            outcome = run_items(run, todo, work, item_id=lambda i: i, results=results,
                                progress=progress, label=mode, total=count)
    finally:  # the worker threads of the tuned forwards
        target.close()
        if preprocess is not None:
            preprocess.close()
    records = [r for r in latest_records(run.read_jsonl(results)) if "error" not in r]
    summary = summarize(records, settings, mode)
    summary.update({"complete": len(records) == count and outcome.stopped is None,
                    "stopped": outcome.stopped, "errors": outcome.errors,
                    "sent_this_call": smoothed.sent, "cached_this_call": smoothed.cached,
                    "forward": {"black_box": forward_backend(target),
                                "preprocess": None if preprocess is None else preprocess.ran},
                    "files": [results, "summary.json", "certified.png", "ledger.sqlite"]})
    if mode == "certify":
        plot_panels(run.own("certified.png"), {"certified accuracy": {
            Path(str(model)).name or str(model): curve(records)}},
            xlabel="ℓ2 radius", ylabel="certified accuracy")
    run.write_summary(summary)
    return summary


def forward_backend(target: Target) -> str:
    """What ran a black box's forward in this process: the tuned backend(s) of a tuned
    ``TorchClassifier`` (``TunedForward.backends``), else ``module`` or ``remote``."""
    if isinstance(target, TorchClassifier):
        return target.runner.ran or "module"
    return "remote"


def read_certify_run(folder: str | Path) -> tuple[dict, list[dict]]:
    """(summary, records) of a finished certify run folder, read without writing."""
    folder = Path(folder)
    if not (folder / "summary.json").is_file() or not (folder / "certify.jsonl").is_file():
        raise InputError(f"{folder} is not a finished 'bbzo defend certify' run (summary.json "
                         f"or certify.jsonl missing)")
    summary = json.loads((folder / "summary.json").read_text())
    records, _ = read_records(folder / "certify.jsonl")
    return summary, [r for r in latest_records(records) if "error" not in r]


def training_cost(folder: str | Path) -> dict[str, Any]:
    """The black-box training queries of the defense a certify run certified: ``method``,
    ``train_queries_per_image_per_step`` (0 for FO) and ``training_queries`` (in total);
    "-" for each when the run certified a plain classifier (no training queries)."""
    config = json.loads((Path(folder) / "config.json").read_text())
    trained = Path(config["options"]["model"]) / "summary.json"
    summary = json.loads(trained.read_text()) if trained.is_file() else {}
    if "queries_per_image_per_step" not in summary:
        return {"method": "-", "train_queries_per_image_per_step": "-", "training_queries": "-"}
    method = summary["method"] + (f" {summary['estimator']}" if summary["method"].startswith(
        "zo") else "")
    return {"method": method,
            "train_queries_per_image_per_step": summary["queries_per_image_per_step"],
            "training_queries": summary["training_queries"]}


def compare(runs: Sequence[str | Path], *, plot: str | Path | None = None) -> list[dict]:
    """One row per certify run (name, accuracy at each radius, ACR, abstain rate, queries per
    certified image, and the defense's training queries: ``training_cost``); with ``plot``,
    their curves overlaid in one PNG."""
    if not runs:
        raise InputError("give at least one certify run folder")
    rows, curves = [], {}
    for folder in runs:
        summary, records = read_certify_run(folder)
        name = Path(folder).name
        rows.append({"run": name, **{f"r={k}": v for k, v in
                                     summary["certified_accuracy"].items()},
                     "acr": summary["acr"], "abstain_rate": summary["abstain_rate"],
                     "queries_per_image": summary["queries_per_image"],
                     **training_cost(folder)})
        curves[name] = curve(records)
    if plot is not None:
        plot_panels(plot, {"certified accuracy": curves}, xlabel="ℓ2 radius",
                    ylabel="certified accuracy")
    return rows

