"""The protocol every ZO module follows, and ``chain`` to compose them (optax style).

A step has two parts, as in optax: the **estimate** (raw ĝ from queries) and the **update**
(what is applied). The estimate is built in four stages (``Estimator.estimate_rows`` runs them,
once per row of a batch, for RGE, CGE, the rank estimator and the evolution strategy), and a
module may act at any of them:

1. ``directions(u, state, ctx)``: reshape the (q, d) perturbation directions before anything is
   queried (antithetic pairs, orthogonalisation, sparsity masks, low-rank noise, preconditioning).
2. ``observe(probe, state, ctx)``: read the measured values (``Probe``) to update its state
   (e.g. HiZOO's curvature estimate). A module that needs f(x) sets ``needs_center``.
3. ``scalars(s, state, ctx)``: edit the (q,) directional-derivative estimates (fitness shaping,
   clipping).
4. ``gradient(g, state, ctx)``: edit the (d,) estimate (subspace projection).

Then the update stage:

5. ``update(g, state, ctx)``: turn the estimate into the step direction (momentum, sign, Adam;
   ``is_update_rule``). ``minimize`` steps ``x -= lr * update(g)``. A chain holds at most one
   update rule.

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
    """What an estimator measured in one step at one point (one row of a batch).

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


def difference_scalars(f_plus: torch.Tensor, f_minus: torch.Tensor | None,
                       f_center: torch.Tensor | None, mu: float) -> torch.Tensor:
    """Directional-derivative estimates from probe values, shape of ``f_plus`` ((q,) for one
    point, (B, q) for a batch, with ``f_center`` then (B, 1)):
    [f(x+μu) − f(x−μu)]/(2μ) when ``f_minus`` is given (central), else [f(x+μu) − f(x)]/μ."""
    if f_minus is not None:
        return (f_plus - f_minus) / (2 * mu)
    if f_center is None:
        raise InputError("forward differences need f(x): evaluate the center point")
    return (f_plus - f_center) / mu


def probe_value(probe: Probe) -> torch.Tensor:
    """f(x) when measured, else the mean of the probe values (f(x) + O(μ²) on a smooth f)."""
    if probe.f_center is not None:
        return probe.f_center
    values = probe.f_plus if probe.f_minus is None else torch.cat([probe.f_plus, probe.f_minus])
    return values.mean()


class Module:
    """Base class: every hook is the identity. Subclasses override the hooks they need.

    Class attributes:
        needs_center: the estimator must also evaluate f(x) (one extra query per step).
        shapes_directions: the module overrides ``directions`` (coordinate estimators refuse it).
        needs_values: the module reads measured values, not only an ordering (an external
            ranker cannot feed it).
        replaces_scalars: ``scalars`` recomputes the scalars from the values (fitness shaping),
            so it must come before every other module with a ``scalars`` stage.
        is_update_rule: the module acts in the ``update`` stage (momentum, sign, Adam).
        across_steps: its effect relies on state carried from step to step at the same point
            (independent estimates, as in ``zo_function``, refuse it).
    """

    needs_center: bool = False
    shapes_directions: bool = False
    needs_values: bool = False
    replaces_scalars: bool = False
    is_update_rule: bool = False
    across_steps: bool = False

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

    def update(self, g: torch.Tensor, state: Any, ctx: Context) -> tuple[torch.Tensor, Any]:
        return g, state

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def acts_at(module: Module, hook: str) -> bool:
    """Whether ``module`` (or a part of a chain) overrides the hook named ``hook``."""
    if isinstance(module, Chain):
        return any(acts_at(m, hook) for m in module.modules)
    return getattr(type(module), hook) is not getattr(Module, hook)


class Chain(Module):
    """Modules applied in order at every stage; state is the tuple of the parts' states.

    Refuses two update rules, and a fitness-shaping module (``replaces_scalars``) placed after
    another module with a ``scalars`` stage (it would undo that module's work).
    """

    def __init__(self, *modules: Module) -> None:
        flat: list[Module] = []
        for m in modules:
            if not isinstance(m, Module):
                raise InputError(f"chain() takes bbzo modules, got {type(m).__name__}; build "
                                 f"them with bbzo.blackbox.zo.modules")
            flat.extend(m.modules if isinstance(m, Chain) else [m])
        rules = [m for m in flat if m.is_update_rule]
        if len(rules) > 1:
            raise InputError(f"a chain takes one update rule, got {', '.join(map(repr, rules))}; "
                             f"keep one (a method name like 'zo-adam' adds one too)")
        for i, m in enumerate(flat):
            earlier = [repr(p) for p in flat[:i] if acts_at(p, "scalars")]
            if m.replaces_scalars and earlier:
                raise InputError(f"{m!r} recomputes the scalars from the values: put it before "
                                 f"{', '.join(earlier)} in the chain, and use one fitness "
                                 f"shaping")
        self.modules = tuple(flat)
        for flag in ("needs_center", "shapes_directions", "needs_values", "replaces_scalars",
                     "is_update_rule", "across_steps"):
            setattr(self, flag, any(getattr(m, flag) for m in flat))

    def init(self, x: torch.Tensor) -> tuple:
        return tuple(m.init(x) for m in self.modules)

    def _thread(self, hook: str, value: torch.Tensor, state: tuple, ctx: Context
                ) -> tuple[torch.Tensor, tuple]:
        """Pass ``value`` through every part's ``hook`` in order, collecting the new states."""
        new = []
        for m, s in zip(self.modules, state, strict=True):
            value, s = getattr(m, hook)(value, s, ctx)
            new.append(s)
        return value, tuple(new)

    def directions(self, u, state, ctx):
        return self._thread("directions", u, state, ctx)

    def observe(self, probe, state, ctx):
        return tuple(m.observe(probe, s, ctx) for m, s in zip(self.modules, state, strict=True))

    def scalars(self, s, state, ctx):
        return self._thread("scalars", s, state, ctx)

    def gradient(self, g, state, ctx):
        return self._thread("gradient", g, state, ctx)

    def update(self, g, state, ctx):
        return self._thread("update", g, state, ctx)

    def __repr__(self) -> str:
        return f"chain({', '.join(map(repr, self.modules))})"


def chain(*modules: Module) -> Chain:
    """Compose modules; ``chain(a, b)`` applies ``a`` then ``b`` at each stage."""
    return Chain(*modules)
