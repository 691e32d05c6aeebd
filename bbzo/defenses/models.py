"""The defenses' networks: a small CNN classifier (the black box to protect), a DnCNN-style
denoiser and a convolutional autoencoder. Every factory is importable, so ``save_classifier``
and the defense folders can name it (``bbzo.defenses.models:small_cnn``)."""

from __future__ import annotations

import torch
from torch import nn

from bbzo.errors import InputError


def small_cnn(channels: int = 1, size: int = 28, classes: int = 10, width: int = 16) -> nn.Module:
    """Two 3×3 conv layers (``width``, 2·``width`` channels) with 2×2 pooling, then a linear
    layer to ``classes`` logits; input (n, channels, size, size)."""
    pooled = size // 4
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * pooled * pooled, classes))


class DnCNN(nn.Module):
    """Residual denoiser: ``x - net(x)`` with ``depth`` 3×3 conv layers of ``width`` channels
    (BatchNorm + ReLU between the inner ones); input and output (n, channels, H, W)."""

    def __init__(self, channels: int = 1, depth: int = 5, width: int = 32) -> None:
        super().__init__()
        if depth < 2 or width < 1:
            raise InputError(f"DnCNN needs depth >= 2 and width >= 1, got {depth}, {width}")
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU()]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.net(x)


class AutoEncoder(nn.Module):
    """Convolutional autoencoder; the latent is ``latent`` numbers (about 16× fewer than the
    input: 48 for 1×28×28). ``encode`` (n, C, H, W) → (n, latent); ``decode`` the reverse,
    with a sigmoid so images stay in [0, 1]. H and W must be multiples of 4."""

    def __init__(self, channels: int = 1, size: int = 28, latent: int = 48,
                 width: int = 16) -> None:
        super().__init__()
        if size % 4:
            raise InputError(f"the autoencoder needs an image size divisible by 4, got {size}")
        self.shape = (channels, size, size)
        small = size // 4
        self.inner = (2 * width, small, small)
        flat = 2 * width * small * small
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(flat, latent))
        self.decoder_in = nn.Sequential(nn.Linear(latent, flat), nn.ReLU())
        self.decoder_out = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1), nn.Sigmoid())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder_out(self.decoder_in(z).unflatten(1, self.inner))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
