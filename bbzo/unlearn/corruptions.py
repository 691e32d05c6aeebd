"""Corruptions of prompt token embeddings, each with a strength σ (a scalar or one value per
strength dimension, ``Corruption.dims(hidden)``).

``noise_first_k``: add N(0, σ²) noise to the first k dimensions (σ per dimension in vector form).
The others move each embedding toward a transformed copy T(x): x + σ·(T(x) − x) (``lerp``),
so σ = 0 leaves it, σ = 1 is T itself and σ > 1 goes past it (σ per hidden dimension in vector
form):

- ``zero_top_k``: zero the k largest-magnitude dimensions of each embedding;
- ``flip_top_k`` / ``flip_first_k``: flip the signs of those dimensions;
- ``rotation``: a random rotation (seeded, orthogonal) of the first k dimensions;
- ``shuffle``: the selected tokens' embeddings in a random (seeded) order.

k None means every dimension. Random draws come from ``seed`` and the prompt's row seed, so
one prompt is corrupted the same way in any batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from bbzo.errors import InputError

NAMES = ("noise_first_k", "zero_top_k", "flip_top_k", "flip_first_k", "rotation", "shuffle")


@dataclass(frozen=True)
class Corruption:
    """One corruption kind and its fixed settings.

    Attributes:
        name: one of ``NAMES``.
        k: dimensions it touches (None: all of them).
        seed: seed of its random draws (noise, rotation, shuffle).
    """

    name: str = "noise_first_k"
    k: int | None = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in NAMES:
            raise InputError(f"unknown corruption {self.name!r}; choose one of {', '.join(NAMES)}")
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int)
                                   or self.k < 1):
            raise InputError(f"corruption k must be a positive integer or None, got {self.k!r}")

    def width(self, hidden: int) -> int:
        """Dimensions touched for embeddings of size ``hidden``."""
        return hidden if self.k is None else min(self.k, hidden)

    def dims(self, hidden: int) -> int:
        """Length of a vector strength: k for noise, ``hidden`` for the others."""
        return self.width(hidden) if self.name == "noise_first_k" else hidden

    def as_dict(self) -> dict:
        return asdict(self)

    def apply(self, x: torch.Tensor, strength: torch.Tensor, row_seed: int = 0) -> torch.Tensor:
        """The corrupted copy of the selected embeddings ``x`` (n, hidden).

        ``strength``: a scalar tensor or a vector of ``dims(hidden)`` values.
        """
        n, hidden = x.shape
        k = self.width(hidden)
        sigma = torch.as_tensor(strength, dtype=x.dtype, device=x.device)
        if sigma.ndim > 1 or (sigma.ndim == 1 and sigma.numel() not in (1, self.dims(hidden))):
            raise InputError(f"strength must be a number or {self.dims(hidden)} numbers for "
                             f"{self.name} on {hidden}-dimensional embeddings, got shape "
                             f"{tuple(sigma.shape)}")
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + row_seed) % 2**63)
        if self.name == "noise_first_k":
            out = x.clone()
            noise = torch.randn((n, k), generator=gen, dtype=torch.float64).to(x)
            out[:, :k] = out[:, :k] + sigma * noise
            return out
        weight = sigma.expand(hidden) if sigma.ndim else sigma
        return torch.lerp(x, self._transform(x, k, gen), weight)  # exact at 0 and 1

    def _transform(self, x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
        out = x.clone()
        if self.name in ("zero_top_k", "flip_top_k"):
            top = x.abs().topk(k, dim=-1).indices
            picked = out.gather(-1, top)
            out.scatter_(-1, top, torch.zeros_like(picked) if self.name == "zero_top_k"
                         else -picked)
        elif self.name == "flip_first_k":
            out[:, :k] = -out[:, :k]
        elif self.name == "rotation":
            q, r = torch.linalg.qr(torch.randn((k, k), generator=gen, dtype=torch.float64))
            q = (q * torch.sign(torch.diagonal(r))).to(x)  # uniform over rotations
            out[:, :k] = x[:, :k] @ q
        else:  # shuffle
            out = x[torch.randperm(x.shape[0], generator=gen).to(x.device)]
        return out
