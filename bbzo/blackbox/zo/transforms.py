"""The protocol every ZO module follows, and ``chain`` to compose them (optax style).

A gradient estimate is built in four stages, and a module may act at any of them:

1. ``directions(u, state, ctx)``: reshape the (q, d) perturbation directions before anything is
   queried (antithetic pairs, orthogonalisation, sparsity masks, low-rank noise, preconditioning).
2. ``observe(probe, state, ctx)``: read the measured values (``Probe``) to update its state
   (e.g. HiZOO's curvature estimate). A module that needs f(x) sets ``needs_center``.
3. ``scalars(s, state, ctx)``: edit the (q,) directional-derivative estimates (clipping).
4. ``gradient(g, state, ctx)``: turn the (d,) estimate into what is applied as the step
   direction (subspace projection, momentum, sign, Adam). ``minimize`` steps ``x -= lr * g``.

Every hook is pure in the optax sense: it returns the new state rather than mutating it.
``init(x)`` makes the first state. Each module documents its extra queries and memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bbzo.errors import InputError


@dataclass
class Context:
    """What a module may know about the step it acts in.

    Attributes:
        x: current point, shape (d,).
        step: 0-based iteration number.
        generator: the run's seeded torch generator (draw randomness only from it).
        mu: smoothing radius of the estimator.
    """

    x: torch.Tensor
    step: int
    generator: torch.Generator
    mu: float


@dataclass
class Probe:
    """What an estimator measured in one step.

    Attributes:
        directions: (q, d) directions after all ``directions`` hooks.
        f_plus: (q,) values f(x + mu u_i).
        f_minus: (q,) values f(x - mu u_i), or None for forward differences.
        f_center: scalar tensor f(x), or None when not evaluated.
    """

    directions: torch.Tensor
    f_plus: torch.Tensor
    f_minus: torch.Tensor | None
    f_center: torch.Tensor | None


class Module:
    """Base class: every hook is the identity. Subclasses override the hooks they need.

    Class attributes:
        needs_center: the estimator must also evaluate f(x) (one extra query per step).
        shapes_directions: the module overrides ``directions`` (coordinate estimators refuse it).
    """

    needs_center: bool = False
    shapes_directions: bool = False

    def init(self, x: torch.Tensor) -> Any:
        return None

    def directions(self, u: torch.Tensor, state: Any, ctx: Context) -> tuple[torch.Tensor, Any]:
        return u, state

    def observe(self, probe: Probe, state: Any, ctx: Context) -> Any:
        return state

    def scalars(self, s: torch.Tensor, state: Any, ctx: Context) -> tuple[torch.Tensor, Any]:
        return s, state

    def gradient(self, g: torch.Tensor, state: Any, ctx: Context) -> tuple[torch.Tensor, Any]:
        return g, state

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class Chain(Module):
    """Modules applied in order at every stage; state is the tuple of the parts' states."""

    def __init__(self, *modules: Module) -> None:
        flat: list[Module] = []
        for m in modules:
            if not isinstance(m, Module):
                raise InputError(f"chain() takes bbzo modules, got {type(m).__name__}; build "
                                 f"them with bbzo.blackbox.zo.modules")
            flat.extend(m.modules if isinstance(m, Chain) else [m])
        self.modules = tuple(flat)
        self.needs_center = any(m.needs_center for m in flat)
        self.shapes_directions = any(m.shapes_directions for m in flat)

    def init(self, x: torch.Tensor) -> tuple:
        return tuple(m.init(x) for m in self.modules)

    def directions(self, u, state, ctx):
        new = []
        for m, s in zip(self.modules, state, strict=True):
            u, s = m.directions(u, s, ctx)
            new.append(s)
        return u, tuple(new)

    def observe(self, probe, state, ctx):
        return tuple(m.observe(probe, s, ctx) for m, s in zip(self.modules, state, strict=True))

    def scalars(self, s, state, ctx):
        new = []
        for m, st in zip(self.modules, state, strict=True):
            s, st = m.scalars(s, st, ctx)
            new.append(st)
        return s, tuple(new)

    def gradient(self, g, state, ctx):
        new = []
        for m, s in zip(self.modules, state, strict=True):
            g, s = m.gradient(g, s, ctx)
            new.append(s)
        return g, tuple(new)

    def __repr__(self) -> str:
        return f"chain({', '.join(map(repr, self.modules))})"


def chain(*modules: Module) -> Chain:
    """Compose modules; ``chain(a, b)`` applies ``a`` then ``b`` at each stage."""
    return Chain(*modules)
