"""``Roles``: the models a run queries, one ``QueryLayer`` per role, one ledger, one budget.

A role is a name (``target``, ``proposer``, ``judge``...) bound to a target spec. Roles on the
same spec and loading options share one loaded model. Loading (``Roles(specs, settings)``)
writes nothing, so a bad spec fails before the run folder is touched; ``connect`` then opens
the run's ledger and gives every role its ``QueryLayer``: all layers write ONE ledger and
spend ONE ``Budget`` (requests sent to any role's model; ledger answers are free). Which
loading options apply to which spec form is ``bbzo.blackbox.targets.spec.load_options``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bbzo.blackbox.budget import Budget
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.ledger import Ledger
from bbzo.blackbox.query.limits import RateLimiter, RateLimits
from bbzo.blackbox.targets.base import Target
from bbzo.blackbox.targets.spec import load_options, load_target
from bbzo.errors import InputError


@dataclass(frozen=True)
class ModelSettings:
    """How a run's models are loaded and limited.

    Attributes:
        device: torch device of local models (None: CUDA if present, else CPU).
        local_batch: requests per forward pass of local causal LMs.
        base_url: base URL of an OpenAI-compatible server, for ``openai:`` specs of the roles
            in ``base_url_roles``.
        base_url_roles: the roles ``base_url`` applies to.
        rpm / tpm: requests / tokens per minute allowed to each remote model (None: no limit).
    """

    device: str | None = None
    local_batch: int = 16
    base_url: str | None = None
    base_url_roles: tuple[str, ...] = ("target",)
    rpm: int | None = None
    tpm: int | None = None


class Roles:
    """The loaded models of a run's roles (module doc).

    Args:
        specs: role -> target spec; roles whose spec is None are off.
        settings: loading options and rate limits.
    """

    def __init__(self, specs: Mapping[str, str | None],
                 settings: ModelSettings | None = None) -> None:
        self.settings = settings or ModelSettings()
        self.specs = {role: spec for role, spec in specs.items() if spec is not None}
        self.models: dict[tuple, tuple[Target, RateLimiter]] = {}
        self.targets: dict[str, Target] = {}
        self.layers: dict[str, QueryLayer] = {}
        self.ledger: Ledger | None = None
        self.budget: Budget | None = None
        try:
            for role, spec in self.specs.items():
                self.targets[role] = self._load(role, spec)
        except BaseException:
            self.close()
            raise

    def _load(self, role: str, spec: str) -> Target:
        s = self.settings
        base_url = s.base_url if role in s.base_url_roles else None
        options = load_options(spec, base_url=base_url, device=s.device,
                               max_batch=s.local_batch)
        key = (spec, tuple(sorted(options.items())))
        if key not in self.models:
            try:
                target = load_target(spec, **options)
            except InputError as err:
                raise InputError(f"{role} model {spec!r}: {err}") from None
            limits = RateLimits(s.rpm, s.tpm) if target.remote else None
            self.models[key] = (target, RateLimiter(limits))
        return self.models[key][0]

    def connect(self, ledger: str | os.PathLike, budget: Budget) -> Roles:
        """Open the ledger file and give every role a ``QueryLayer`` spending ``budget``."""
        if self.ledger is not None:
            raise InputError("these roles are already connected to a ledger")
        self.ledger, self.budget = Ledger(ledger), budget
        limiters = {id(target): limiter for target, limiter in self.models.values()}
        for role, target in self.targets.items():
            self.layers[role] = QueryLayer(target, ledger=self.ledger, budget=budget,
                                           limits=limiters[id(target)])
        return self

    def usage(self) -> dict[str, dict[str, float]]:
        """Per connected role: requests asked for, requests sent, tokens and US dollars."""
        return {role: {"requests": layer.stats.requests, "sent": layer.stats.sent,
                       "tokens": layer.stats.tokens, "cost": layer.stats.cost}
                for role, layer in self.layers.items()}

    def close(self) -> None:
        """Release every loaded model and the ledger."""
        for target, _ in self.models.values():
            target.close()
        if self.ledger is not None:
            self.ledger.close()

    def __enter__(self) -> Roles:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
