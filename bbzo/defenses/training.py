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

import math
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
from bbzo.defenses.data import Dataset, check_name, load_dataset
from bbzo.defenses.defense import METHODS, Defense, build_networks
from bbzo.defenses.models import AutoEncoder
from bbzo.errors import InputError
from bbzo.plots import plot_panels
from bbzo.runs import RunFolder, check_run_folder
from bbzo.runs.settings import check_fields

Progress = Callable[[str, int, int], None]
ESTIMATORS = ("rge", "cge")


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
    from bbzo.defenses.models import small_cnn

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
    import json

    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
