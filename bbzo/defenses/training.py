"""Training: the plain classifier to protect, the autoencoder, and the four defense variants.

``train_classifier`` fits ``small_cnn`` on clean images (not noise-trained) and saves it with
``save_classifier``, so its folder is a black-box spec. ``train_defense`` trains a denoiser (and
an encoder) in front of a black box with the stability loss CE(f(pre(x + δ)), argmax f(x)):

- ``fo-ds`` / ``fo-ae-ds``: white-box gradients through a local torch classifier.
- ``zo-ds``: the ZO gradient of the loss w.r.t. the denoised image (pixel space).
- ``zo-ae-ds``: the ZO gradient w.r.t. the encoder's latent z; the frozen decoder is part of
  the black box. The estimate comes from ``bbzo.zo_function`` (RGE with unit-sphere directions
  scaled by d and forward differences, ĝ = (d/q) Σ [f(z + μu_i) − f(z)]/μ · u_i: q + 1 queries
  per image per step; or forward CGE over all d coordinates: d + 1 queries per image per step)
  and is back-propagated through the encoder and denoiser.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bbzo.blackbox.protocol import Request
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.ledger import Ledger
from bbzo.blackbox.targets.classifier import TorchClassifier, save_classifier
from bbzo.blackbox.targets.spec import load_target
from bbzo.blackbox.zo.bridge import zo_function
from bbzo.blackbox.zo.estimators import CGE, RGE
from bbzo.checks import int_at_least
from bbzo.defenses.data import Dataset, check_name, load_dataset
from bbzo.defenses.defense import METHODS, Defense, build_networks
from bbzo.defenses.models import small_cnn
from bbzo.errors import InputError
from bbzo.plots import plot_panels
from bbzo.runs import RunFolder, check_run_folder
from bbzo.runs.settings import check_fields

Progress = Callable[[str, int, int], None]
ESTIMATORS = ("rge", "cge")
PRETRAINED_AE = "pretrained_autoencoder.pt"


def _batches(n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    return [order[i:i + size] for i in range(0, n, size)]


def accuracy(module: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    """Top-1 accuracy of a local module on images x (N, C, H, W)."""
    module.eval()
    with torch.no_grad():
        hits = sum(int((module(torch.from_numpy(x[i:i + batch])).argmax(1).numpy()
                        == y[i:i + batch]).sum()) for i in range(0, len(y), batch))
    return hits / max(len(y), 1)


def train_classifier(*, data: str = "mnist5k", epochs: int = 5, out: str | Path,
                     seed: int = 0, width: int = 16, lr: float = 1e-3, batch: int = 64,
                     progress: Progress | None = None) -> dict[str, Any]:
    """Train ``small_cnn`` on ``data`` (model chosen on validation accuracy) and save it to
    ``out`` with ``save_classifier``; returns the summary (validation and test accuracy)."""
    if not isinstance(epochs, int) or epochs < 1:
        raise InputError(f"epochs must be a positive integer, got {epochs!r}")
    check_name(data)
    dataset = load_dataset(data)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} is not empty; choose a new --out for the classifier")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    c, size = dataset.shape[0], dataset.shape[1]
    kwargs = {"channels": c, "size": size, "classes": dataset.classes, "width": width}
    model = small_cnn(**kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best, best_state, history = -1.0, None, []
    for epoch in range(epochs):
        model.train()
        for b in _batches(len(dataset.train), batch, rng):
            loss = F.cross_entropy(model(torch.from_numpy(dataset.train.x[b])),
                                   torch.from_numpy(dataset.train.y[b]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        val = accuracy(model, dataset.val.x, dataset.val.y)
        history.append({"epoch": epoch + 1, "val_accuracy": val})
        if val > best:
            best, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
        if progress is not None:
            progress("epochs", epoch + 1, epochs)
    model.load_state_dict(best_state)
    save_classifier(model, out, "bbzo.defenses.models:small_cnn", kwargs, outputs="logits")
    summary = {"data": dataset.describe(), "seed": seed, "epochs": epochs,
               "val_accuracy": best, "test_accuracy": accuracy(model, dataset.test.x,
                                                                dataset.test.y),
               "history": history}
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@dataclass(frozen=True)
class TrainSettings:
    """One defense training run (module doc).

    Attributes:
        method: fo-ds, fo-ae-ds, zo-ds or zo-ae-ds.
        estimator: rge or cge (ZO methods).
        q: RGE directions per image per step; mu: ZO smoothing radius.
        sigma: training noise level.
        epochs: ZO/FO training epochs; batch: images per step; lr, weight_decay: Adam's.
        depth, width: denoiser size; latent: autoencoder latent size (AE methods).
        ae_epochs: autoencoder pre-training epochs (reconstruction MSE, local).
        denoiser_epochs: denoiser pre-training epochs (MSE to the clean image, local).
        train_limit: train D (+ E) on the first this many training images (None: all);
            local pre-training always uses all of them.
        val_limit: validation images scored after each epoch for model selection.
        autoencoder: a pre-trained autoencoder to start from instead of pre-training one
            (the ``pretrained_autoencoder.pt`` an AE run writes, or its folder).
    """

    method: str = "zo-ae-ds"
    estimator: str = "rge"
    q: int = 20
    mu: float = 0.005
    sigma: float = 0.25
    epochs: int = 5
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    depth: int = 4
    width: int = 16
    latent: int = 48
    ae_epochs: int = 5
    denoiser_epochs: int = 1
    train_limit: int | None = None
    val_limit: int = 200
    autoencoder: str | None = None

    def __post_init__(self) -> None:
        def one_of(name: str, options: tuple[str, ...]) -> Callable[[], None]:
            def check() -> None:
                if getattr(self, name) not in options:
                    raise InputError(f"{name} must be one of {', '.join(options)}, got "
                                     f"{getattr(self, name)!r}")
            return check

        def positive(name: str, *, integer: bool, zero: bool = False) -> Callable[[], None]:
            def check() -> None:
                v = getattr(self, name)
                ok = isinstance(v, int) if integer else isinstance(v, (int, float))
                if isinstance(v, bool) or not ok or not (v >= 0 if zero else v > 0) \
                        or v != v or v == float("inf"):
                    kind = "integer" if integer else "number"
                    raise InputError(f"{name} must be a {'non-negative' if zero else 'positive'}"
                                     f" {kind}, got {v!r}")
            return check

        checks = [("method", one_of("method", METHODS)),
                  ("estimator", one_of("estimator", ESTIMATORS))]
        checks += [(n, positive(n, integer=True)) for n in ("q", "epochs", "batch", "depth",
                                                             "width", "latent", "val_limit")]
        checks += [(n, positive(n, integer=False)) for n in ("mu", "sigma", "lr")]
        checks += [(n, positive(n, integer=True, zero=True)) for n in ("ae_epochs",
                                                                        "denoiser_epochs")]
        checks += [("weight_decay", positive("weight_decay", integer=False, zero=True))]
        if self.train_limit is not None:
            checks.append(("train_limit", positive("train_limit", integer=True)))
        check_fields(checks)

    @property
    def uses_ae(self) -> bool:
        return self.method.endswith("ae-ds")

    @property
    def zeroth_order(self) -> bool:
        return self.method.startswith("zo")

    def to_dict(self) -> dict:
        return asdict(self)


def queries_per_image(settings: TrainSettings, dim: int) -> int:
    """Black-box queries per training image per step for the ZO gradient: q + 1 (forward RGE)
    or d + 1 (forward CGE over all d coordinates); 0 for first-order methods."""
    if not settings.zeroth_order:
        return 0
    return settings.q + 1 if settings.estimator == "rge" else dim + 1


def epoch_bound(settings: TrainSettings, dim: int, images: int) -> int:
    """The most black-box queries one epoch can send: per image, its clean label and
    ``queries_per_image`` (ZO), then the validation draw (fewer when the ledger answers)."""
    return images * (1 + queries_per_image(settings, dim)) + settings.val_limit


class StabilityLoss:
    """The black-box loss of ZO training as a batched objective for ``bbzo.zo_function``.

    ``fun(X)`` (n, d): each row is decoded to an image (``decode``: the frozen decoder for
    ZO-AE-DS, a reshape for ZO-DS), sent as one dense request through ``layer``, and scored
    with CE(f(image), label) where label is the black box's clean prediction for the batch row
    the probe belongs to (its nearest row of ``anchor``, set before each ``F(Z)`` call).
    """

    meters_queries = True

    def __init__(self, layer: QueryLayer, decode: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.layer = layer
        self.decode = decode
        self.anchor: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None

    @property
    def budget(self):  # noqa: ANN201 - the layer's Budget
        return self.layer.budget

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        owner = torch.cdist(X.float(), self.anchor.float()).argmin(dim=1)
        with torch.no_grad():
            images = self.decode(X.float()).numpy()
        probs = classify_probs(self.layer, images)
        picked = probs[np.arange(len(probs)), self.labels[owner].numpy()]
        return torch.from_numpy(-np.log(np.maximum(picked, 1e-12))).to(X.dtype)


def classify_probs(layer: QueryLayer, images: np.ndarray) -> np.ndarray:
    """Probabilities (n, classes) of the black box for images (n, C, H, W): one dense request
    per image through ``layer``."""
    requests = Request.dense_batch("classify", "inputs", images.astype(np.float32)[:, None])
    responses = layer.submit(requests, all_or_nothing=True)
    return np.concatenate([np.asarray(r.output["probs"], dtype=np.float64) for r in responses])


def _local_module(target: object, method: str) -> nn.Module:
    if not isinstance(target, TorchClassifier):
        raise InputError(f"{method} is a white-box baseline: it needs a local torch classifier "
                         f"(a saved folder or torch:file.py:factory), not {target.id}; use "
                         f"zo-ds or zo-ae-ds for a black box")  # type: ignore[attr-defined]
    for p in target.module.parameters():
        p.requires_grad_(False)
    return target.module


def _pretrain(module: nn.Module, x: np.ndarray, epochs: int, *, noise: float, seed: int,
              batch: int, lr: float) -> None:
    """Local MSE pre-training: reconstruct x from x + noise·δ (AE: noise 0; denoiser: σ)."""
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    module.train()
    for _ in range(epochs):
        for b in _batches(len(x), batch, rng):
            clean = torch.from_numpy(x[b])
            noisy = clean + noise * torch.randn(clean.shape, generator=gen)
            loss = F.mse_loss(module(noisy), clean)
            opt.zero_grad()
            loss.backward()
            opt.step()


def train_defense(blackbox: str, *, out: str | Path, data: str = "mnist5k",
                  settings: TrainSettings | None = None, seed: int = 0, resume: bool = False,
                  max_queries: int | None = None,
                  progress: Progress | None = None) -> dict[str, Any]:
    """Train a defense for the black box ``blackbox`` (a classifier spec) into the run folder
    ``out`` (a defense folder ``certify`` takes as ``--model``); returns the summary.

    ``max_queries``: most black-box queries this call sends (ledger answers are free; it may
    change on a resume). No epoch starts that its worst case could overrun (``epoch_bound``):
    training then stops after the last whole epoch, with ``stopped`` saying why, and a resume
    with a larger budget continues from that epoch's checkpoint.

    Writes config.json, history.jsonl (one record per epoch: loss, validation accuracy,
    queries), checkpoint.pt after every epoch (``resume=True`` continues from it), the best
    epoch's weights on the validation split (defense.json, denoiser.pt, autoencoder.pt),
    loss.png (training loss against black-box queries), ledger.sqlite and summary.json.
    """
    settings = settings or TrainSettings()
    if max_queries is not None:
        max_queries = int_at_least("max_queries", max_queries)
    if max_queries is not None and max_queries < settings.val_limit:
        raise InputError(f"max_queries {max_queries} does not cover one validation "
                         f"({settings.val_limit} queries); raise --max-queries or lower "
                         f"--val-limit")
    check_name(data)
    dataset = load_dataset(data)
    check_run_folder(out, resume=resume)
    target = load_target(blackbox, max_batch=1024)
    local = None if settings.zeroth_order else _local_module(target, settings.method)
    from bbzo.defenses.certify import check_fits

    check_fits(target, None, dataset.val.x[0])
    run = RunFolder(out, resume=resume)
    run.write_config({"blackbox": blackbox, "data": dataset.describe(), **settings.to_dict()},
                     seed)
    with Ledger(run.own("ledger.sqlite")) as ledger:
        layer = QueryLayer(target, ledger=ledger, budget=max_queries)
        return _train(run, layer, local, dataset, settings, blackbox, seed, progress)


def _load_autoencoder(ae: nn.Module, path: str) -> None:
    """Load a pre-trained autoencoder (a run's ``pretrained_autoencoder.pt``, or its folder)."""
    file = Path(path) / PRETRAINED_AE if Path(path).is_dir() else Path(path)
    try:
        ae.load_state_dict(torch.load(file, weights_only=True))
    except (OSError, RuntimeError) as err:
        raise InputError(f"cannot load a pre-trained autoencoder from {file} "
                         f"({' '.join(str(err).split())[:200]}); give the "
                         f"{PRETRAINED_AE} of a run with the same --latent") from None


def _make_defense(dataset: Dataset, settings: TrainSettings, blackbox: str, seed: int
                  ) -> Defense:
    torch.manual_seed(seed)
    denoiser, ae = build_networks(dataset.shape, depth=settings.depth, width=settings.width,
                                  latent=settings.latent if settings.uses_ae else None)
    info = {"shape": list(dataset.shape), "depth": settings.depth, "width": settings.width,
            "latent": settings.latent if settings.uses_ae else None, "data": dataset.name}
    return Defense(settings.method, blackbox, settings.sigma, denoiser, ae, info)


def _optimizer(defense: Defense, settings: TrainSettings) -> torch.optim.Optimizer:
    params = list(defense.denoiser.parameters())
    if defense.autoencoder is not None:
        params += list(defense.autoencoder.encoder.parameters())  # the decoder stays frozen
    return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)


def _validate(defense: Defense, layer: QueryLayer, dataset: Dataset, settings: TrainSettings,
              seed: int) -> float:
    """Accuracy of black box ∘ defense on one fixed noisy draw of the validation images."""
    x, y = dataset.val.x[:settings.val_limit], dataset.val.y[:settings.val_limit]
    gen = torch.Generator().manual_seed(seed + 7919)
    noisy = torch.from_numpy(x) + settings.sigma * torch.randn(x.shape, generator=gen)
    defense.eval()
    with torch.no_grad():
        images = defense.preprocess(noisy).numpy()
    return float((classify_probs(layer, images).argmax(1) == y).mean())


def _train(run: RunFolder, layer: QueryLayer, local: nn.Module | None, dataset: Dataset,
           settings: TrainSettings, blackbox: str, seed: int,
           progress: Progress | None) -> dict[str, Any]:
    defense = _make_defense(dataset, settings, blackbox, seed)
    train_x = dataset.train.x[:settings.train_limit]
    opt = _optimizer(defense, settings)
    state = None
    if run.file("checkpoint.pt").is_file():
        state = torch.load(run.file("checkpoint.pt"), weights_only=False)
    if state is None:
        # Pre-training is local (no query): it uses every training image.
        if defense.autoencoder is not None and settings.autoencoder is not None:
            _load_autoencoder(defense.autoencoder, settings.autoencoder)
        elif defense.autoencoder is not None:
            _pretrain(defense.autoencoder, dataset.train.x, settings.ae_epochs, noise=0.0,
                      seed=seed, batch=settings.batch, lr=settings.lr)
            with run.atomic(PRETRAINED_AE) as tmp:
                torch.save(defense.autoencoder.state_dict(), tmp)
        _pretrain(defense.denoiser, dataset.train.x, settings.denoiser_epochs,
                  noise=settings.sigma,
                  seed=seed + 1, batch=settings.batch, lr=settings.lr)
        best = {"epoch": 0, "val_accuracy": 0.0,
                "pretrained_val_accuracy": _validate(defense, layer, dataset, settings, seed)}
        queries = 0
        history = []
        start = 0
    else:
        defense.denoiser.load_state_dict(state["denoiser"])
        if defense.autoencoder is not None:
            defense.autoencoder.load_state_dict(state["autoencoder"])
        opt.load_state_dict(state["optimizer"])
        # The checkpoint is the truth: it holds the history up to its epoch; an epoch record
        # lost by a crash between the checkpoint and history.jsonl is written again.
        best, queries, history = state["best"], state["queries"], state["history"]
        start = len(history)
        for record in history[len(run.read_jsonl("history.jsonl")):]:
            run.append_jsonl("history.jsonl", record)
    dim = settings.latent if settings.uses_ae else int(np.prod(dataset.shape))
    per_image = queries_per_image(settings, dim)
    curve = [(h["queries"], h["loss"]) for h in history]
    bound, stopped = epoch_bound(settings, dim, len(train_x)), None
    for epoch in range(start, settings.epochs):
        if not layer.budget.can_afford(queries=bound):
            stopped = (f"budget: {layer.budget.remaining_queries} of {layer.budget.max_queries} "
                       f"queries left, an epoch may send {bound}; resume with a larger "
                       f"--max-queries")
            break
        began = time.perf_counter()
        sent_before = layer.stats.queries
        loss = _epoch(defense, layer, local, opt, train_x, settings, seed, epoch, curve,
                      queries)
        queries += layer.stats.queries - sent_before
        val = _validate(defense, layer, dataset, settings, seed)
        record = {"epoch": epoch + 1, "loss": loss, "val_accuracy": val,
                  "queries": queries, "seconds": time.perf_counter() - began}
        if epoch == 0 or val > best["val_accuracy"]:
            best = {**best, "epoch": epoch + 1, "val_accuracy": val}
            for name in ("defense.json", "denoiser.pt", "autoencoder.pt"):
                if name != "autoencoder.pt" or defense.autoencoder is not None:
                    run.own(name)
            defense.save(run.path)
        with run.atomic("checkpoint.pt") as tmp:
            torch.save({"denoiser": defense.denoiser.state_dict(),
                        "autoencoder": None if defense.autoencoder is None
                        else defense.autoencoder.state_dict(),
                        "optimizer": opt.state_dict(), "best": best, "queries": queries,
                        "history": [*history, record]}, tmp)
        run.append_jsonl("history.jsonl", record)
        history.append(record)
        if progress is not None:
            progress("epochs", epoch + 1, settings.epochs)
    plot_panels(run.own("loss.png"), {f"{settings.method} ({settings.estimator})": {
        "training loss": ([c[0] for c in curve] or [0], [c[1] for c in curve] or [0])}},
        xlabel="black-box queries", ylabel="stability loss (batch mean)")
    summary = {"method": settings.method, "estimator": settings.estimator,
               "queries_per_image_per_step": per_image,
               "train_images": len(train_x), "epochs": settings.epochs,
               "epochs_done": len(history), "complete": len(history) == settings.epochs,
               "stopped": stopped, "sent_this_call": layer.stats.queries,
               "training_queries": queries,
               "training_queries_per_image": queries / max(len(train_x), 1),
               "total_queries": layer.ledger.summary().answered if layer.ledger else None,
               "best": best, "history": history,
               "files": ["defense.json", "denoiser.pt", "checkpoint.pt", "history.jsonl",
                         "loss.png", "ledger.sqlite", "summary.json"]}
    run.write_summary(summary)
    return summary


def _log_probs(out: torch.Tensor, outputs: str) -> torch.Tensor:
    """Log-probabilities of a local classifier's output under its outputs rule."""
    is_dist = bool(((out >= 0) & (out <= 1)).all()) and bool(
        ((out.sum(-1) - 1).abs() <= 1e-3).all())
    if outputs == "probs" or (outputs == "auto" and is_dist):
        return out.clamp_min(1e-12).log()
    return F.log_softmax(out, dim=-1)


def _epoch(defense: Defense, layer: QueryLayer, local: nn.Module | None,
           opt: torch.optim.Optimizer, x: np.ndarray, settings: TrainSettings, seed: int,
           epoch: int, curve: list, queries0: int) -> float:
    """One epoch of D (+ E) training; appends (queries so far, batch loss) to ``curve``."""
    rng = np.random.default_rng([seed, epoch])
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    defense.denoiser.train()
    ae = defense.autoencoder
    if ae is not None:
        ae.encoder.train()
        for part in (ae.decoder_in, ae.decoder_out):
            part.eval()
            part.requires_grad_(False)
    fz, loss_fn = None, None
    if settings.zeroth_order:
        loss_fn = StabilityLoss(layer, ae.decode if ae is not None
                                else (lambda z: z.reshape(len(z), *x.shape[1:])))
        est = (RGE(q=settings.q, mu=settings.mu, distribution="sphere", difference="forward")
               if settings.estimator == "rge" else CGE(mu=settings.mu, difference="forward"))
        fz = zo_function(loss_fn, est, seed=seed * 100_003 + epoch)
    outputs = getattr(layer.target, "outputs", "auto")
    sent0, total, steps = layer.stats.queries, 0.0, 0
    for b in _batches(len(x), settings.batch, rng):
        clean = torch.from_numpy(x[b])
        labels = torch.from_numpy(classify_probs(layer, x[b]).argmax(1))
        noisy = clean + settings.sigma * torch.randn(clean.shape, generator=gen)
        denoised = defense.denoiser(noisy)
        if fz is not None:
            z = ae.encode(denoised) if ae is not None else denoised.flatten(1)
            loss_fn.anchor, loss_fn.labels = z.detach(), labels
            loss = fz(z).mean()
        else:
            images = ae.decode(ae.encode(denoised)) if ae is not None else denoised
            loss = F.nll_loss(_log_probs(local(images), outputs), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        value = float(loss.detach())
        total += value
        steps += 1
        curve.append((queries0 + layer.stats.queries - sent0, value))
    return total / max(steps, 1)
