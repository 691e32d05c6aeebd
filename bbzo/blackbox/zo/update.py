"""Update rules: modules of the ``update`` stage, turning an estimate into the step direction.

``minimize`` (and ``EvolutionStrategy``) apply ``x ← x − lr · update(ĝ)``; a chain holds at
most one update rule. The named methods add one to the chain:

| method | chain tail | extra memory |
| --- | --- | --- |
| ``zo-sgd`` | (nothing) | none |
| ``zo-momentum`` | ``momentum(0.9)`` | one d-vector |
| ``zo-sign-sgd`` | ``sign()`` | none |
| ``zo-adam`` | ``adam()`` | two d-vectors (erodes ZO's memory advantage at model scale) |
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from bbzo.blackbox.zo.transforms import Module
from bbzo.checks import positive, unit_interval
from bbzo.errors import InputError


class UpdateRule(Module):
    """Base of the update rules: they act in the ``update`` stage only."""

    is_update_rule = True


class Momentum(UpdateRule):
    """Heavy-ball momentum: m ← β m + g; returns m (or g + β m with ``nesterov``).

    Extra queries: none. Memory: one d-vector.
    """

    across_steps = True

    def __init__(self, beta: float = 0.9, nesterov: bool = False) -> None:
        self.beta = unit_interval("beta", beta)
        self.nesterov = nesterov

    def init(self, x):
        return torch.zeros_like(x)

    def update(self, g, state, ctx):
        m = self.beta * state + g
        return (g + self.beta * m if self.nesterov else m), m


class Sign(UpdateRule):
    """ZO-signSGD: the elementwise sign of the estimate. Extra queries: none. Memory: none."""

    def update(self, g, state, ctx):
        return torch.sign(g), state


class AdamState(NamedTuple):
    m: torch.Tensor
    v: torch.Tensor
    t: int


class Adam(UpdateRule):
    """Adam on the estimate (bias-corrected moments). Extra queries: none. Memory: 2 d-vectors."""

    across_steps = True

    def __init__(self, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> None:
        self.b1 = unit_interval("b1", b1)
        self.b2 = unit_interval("b2", b2)
        self.eps = positive("eps", eps)

    def init(self, x):
        return AdamState(torch.zeros_like(x), torch.zeros_like(x), 0)

    def update(self, g, state, ctx):
        t = state.t + 1
        m = self.b1 * state.m + (1 - self.b1) * g
        v = self.b2 * state.v + (1 - self.b2) * g * g
        m_hat = m / (1 - self.b1 ** t)
        v_hat = v / (1 - self.b2 ** t)
        return m_hat / (v_hat.sqrt() + self.eps), AdamState(m, v, t)


def momentum(beta: float = 0.9, nesterov: bool = False) -> Momentum:
    return Momentum(beta, nesterov)


def sign() -> Sign:
    return Sign()


def adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Adam:
    return Adam(b1, b2, eps)


METHODS = {
    "zo-sgd": lambda: (),
    "zo-momentum": lambda: (momentum(),),
    "zo-sign-sgd": lambda: (sign(),),
    "zo-adam": lambda: (adam(),),
}


def method_tail(method: str) -> tuple[Module, ...]:
    """The update-rule modules that make the named method."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return METHODS[method]()
