"""A trained defense: the local stages in front of a black-box classifier, saved as a folder.

Folder layout: ``defense.json`` (method, black-box spec, data set, σ, network settings),
``denoiser.pt`` and, for the AE variants, ``autoencoder.pt`` (state dicts). At inference the
pipeline is x → denoiser → (encoder → decoder) → black box; the black box itself is never part
of the folder, only its spec.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from bbzo.blackbox.targets.base import Target
from bbzo.blackbox.targets.spec import load_target
from bbzo.blackbox.targets.tuned import TUNED_CHUNK, TunedForward
from bbzo.defenses.models import AutoEncoder, DnCNN
from bbzo.errors import InputError

DEFENSE = "defense.json"
METHODS = ("fo-ds", "fo-ae-ds", "zo-ds", "zo-ae-ds")


@dataclass
class Defense:
    """Denoiser (and autoencoder for ``*-ae-ds``) trained for ``blackbox`` at noise ``sigma``.

    Attributes:
        method: one of ``METHODS``.
        blackbox: target spec of the protected classifier.
        sigma: training noise level.
        denoiser: the DnCNN; autoencoder: the AE or None.
        info: network settings and training notes written to ``defense.json``.
    """

    method: str
    blackbox: str
    sigma: float
    denoiser: DnCNN
    autoencoder: AutoEncoder | None
    info: dict = field(default_factory=dict)

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.denoiser, self.autoencoder) if m is not None]

    def eval(self) -> Defense:
        for m in self.modules():
            m.eval()
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """What the black box receives for noisy images x (n, C, H, W)."""
        out = self.denoiser(x)
        if self.autoencoder is not None:
            out = self.autoencoder(out)
        return out

    def fast_preprocess(self, chunk: int = TUNED_CHUNK, backend: str = "auto") -> TunedForward:
        """``preprocess`` for inference (certification): the denoiser (+ autoencoder) as one
        ``TunedForward`` (compiled once per input shape, by ONNX Runtime when installed, else
        as a frozen TorchScript trace, checked against the modules, run on ``chunk`` images at
        a time on worker threads; the plain modules where neither works). Outputs equal
        ``preprocess``'s within ``TUNED_TOL``; call it on CPU tensors, in ``eval`` mode;
        ``close()`` it when done. ``backend``: ``TunedForward``'s."""
        return TunedForward(nn.Sequential(*self.modules()).eval(), chunk=chunk, backend=backend)

    def save(self, folder: str | Path, checkpoint: str = "") -> Path:
        """Write the folder (module doc); ``checkpoint`` prefixes the weight files."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.denoiser.state_dict(), folder / f"{checkpoint}denoiser.pt")
        if self.autoencoder is not None:
            torch.save(self.autoencoder.state_dict(), folder / f"{checkpoint}autoencoder.pt")
        if not checkpoint:
            meta = {"method": self.method, "blackbox": self.blackbox, "sigma": self.sigma,
                    **self.info}
            (folder / DEFENSE).write_text(json.dumps(meta, indent=2) + "\n")
        return folder


def build_networks(shape: tuple[int, ...], *, depth: int, width: int, latent: int | None
                   ) -> tuple[DnCNN, AutoEncoder | None]:
    """Fresh denoiser and (with ``latent``) autoencoder for images of ``shape`` (C, H, W)."""
    denoiser = DnCNN(shape[0], depth=depth, width=width)
    ae = None if latent is None else AutoEncoder(shape[0], shape[1], latent=latent)
    return denoiser, ae


def is_defense(folder: str | Path) -> bool:
    return (Path(folder) / DEFENSE).is_file()


def load_defense(folder: str | Path) -> Defense:
    """The ``Defense`` saved in ``folder``."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / DEFENSE).read_text())
        shape = tuple(meta["shape"])
        denoiser, ae = build_networks(shape, depth=meta["depth"], width=meta["width"],
                                      latent=meta.get("latent"))
        denoiser.load_state_dict(torch.load(folder / "denoiser.pt", weights_only=True))
        if ae is not None:
            ae.load_state_dict(torch.load(folder / "autoencoder.pt", weights_only=True))
    except (OSError, KeyError, ValueError, RuntimeError) as err:
        raise InputError(f"{folder} is not a readable bbzo defense ({err}); give the --out "
                         f"folder of 'bbzo defend train'") from None
    info = {k: v for k, v in meta.items() if k not in ("method", "blackbox", "sigma")}
    return Defense(meta["method"], meta["blackbox"], meta["sigma"], denoiser, ae, info).eval()


def resolve_model(model: str, *, blackbox: str | None = None, max_batch: int = 1000
                  ) -> tuple[Target, Defense | None]:
    """The black box to query and the defense in front of it (None: certify the classifier
    itself). ``model`` is a defense folder or a classifier spec; ``blackbox`` replaces the
    defense's black-box spec (e.g. the same classifier served over HTTP)."""
    if is_defense(model):
        defense = load_defense(model)
        spec = blackbox or defense.blackbox
    else:
        if blackbox is not None:
            raise InputError("--blackbox applies to a defense folder; give the classifier as "
                             "--model to certify it without a denoiser")
        defense, spec = None, model
    return load_target(spec, max_batch=max_batch), defense
