"""Random perturbation directions. Every kind here has E[u uᵀ] = I, so no extra factor of d
is needed in the estimate (the unit sphere is scaled by √d to make that true)."""

from __future__ import annotations

import math

import torch

from bbzo.errors import InputError

DISTRIBUTIONS = ("gaussian", "sphere", "rademacher")


def sample_directions(kind: str, q: int, d: int, generator: torch.Generator,
                      dtype: torch.dtype = torch.float64,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """Draw ``q`` directions in R^d, shape (q, d).

    Args:
        kind: "gaussian" (N(0, I)), "sphere" (uniform on the sphere of radius √d) or
            "rademacher" (independent ±1 entries).
        generator: torch generator on ``device``; the only source of randomness.
    """
    if kind == "gaussian":
        return torch.randn(q, d, generator=generator, dtype=dtype, device=device)
    if kind == "sphere":
        u = torch.randn(q, d, generator=generator, dtype=dtype, device=device)
        return u * (math.sqrt(d) / u.norm(dim=1, keepdim=True).clamp_min(1e-30))
    if kind == "rademacher":
        bits = torch.randint(0, 2, (q, d), generator=generator, device=device)
        return (2 * bits - 1).to(dtype)
    raise InputError(f"unknown direction distribution {kind!r}; choose one of "
                     f"{', '.join(DISTRIBUTIONS)}")
