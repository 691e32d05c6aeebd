"""A query layer as the engine's batched objective ``fun(X) -> (n,)``.

``LayerObjective`` sends row ``i`` of ``X`` (n, d) as one dense request (the row reshaped to a
batch of one input, ``(1, *shape)``, in ``payload[field]``) through a ``QueryLayer`` and maps each
answer to a float with ``reduce`` (``cross_entropy(label)``, ``class_probability(c)`` or your
own ``reduce(output) -> float``). Rows already in the ledger (or repeated within the batch) are
answered free.

Contract with the engine (``bbzo.blackbox.zo``): the objective meters its own queries
(``meters_queries = True``), so the engine must not count its rows again. It shares ONE
``Budget`` with the layer (``budget``), counts rows really sent (``nsent``) apart from rows
answered free (``ncached``), and raises ``bbzo.BudgetExceeded`` itself, sending nothing, when the
budget cannot cover the rows of a batch that would be sent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from bbzo.blackbox.budget import Budget
from bbzo.blackbox.protocol import KINDS, Request
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.ledger import Ledger
from bbzo.blackbox.targets.base import Target
from bbzo.errors import InputError, ObjectiveError

Reduce = Callable[[Any], float]
_TINY = 1e-12  # probability floor of cross_entropy, so a zero probability gives 27.6, not inf


def _probs(output: Any) -> np.ndarray:
    """The single row of class probabilities in a ``classify`` answer, as float64 (1, classes)."""
    try:
        probs = np.asarray(output["probs"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise ObjectiveError("the answer holds no 'probs' table; reduce classify answers only "
                             "with cross_entropy / class_probability") from None
    if probs.ndim != 2 or probs.shape[0] != 1:
        raise ObjectiveError(f"expected probabilities for one input, shape (1, classes), got "
                             f"{probs.shape}")
    return probs


def _class_index(c: int, name: str) -> int:
    if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0:
        raise InputError(f"{name} must be a non-negative class index, got {c!r}")
    return int(c)


class ProbabilityReduce:
    """A ``reduce`` of ``classify`` answers defined on probability tables: ``of(P)`` maps
    float64 probabilities (n, classes) to values (n,). ``reduce(output) -> float`` for one
    answer; ``many(outputs) -> (n,)`` for a batch in one vector operation (what
    ``LayerObjective`` calls; the same numbers as one by one)."""

    def __init__(self, of: Callable[[np.ndarray], np.ndarray]) -> None:
        self.of = of

    def __call__(self, output: Any) -> float:
        return float(self.of(_probs(output))[0])

    def many(self, outputs: Sequence[Any]) -> np.ndarray:
        try:
            probs = np.stack([output["probs"] for output in outputs]).astype(np.float64)
        except (KeyError, TypeError, ValueError, IndexError):  # ragged or malformed
            probs = None
        if probs is None or probs.ndim != 3 or probs.shape[1] != 1:
            return np.array([self(output) for output in outputs], dtype=np.float64)
        return np.asarray(self.of(probs[:, 0]), dtype=np.float64)


def cross_entropy(label: int) -> ProbabilityReduce:
    """``-log p[label]`` of a ``classify`` answer (probability floored at 1e-12)."""
    label = _class_index(label, "label")
    return ProbabilityReduce(lambda probs: -np.log(np.maximum(probs[:, label], _TINY)))


def class_probability(c: int) -> ProbabilityReduce:
    """``p[c]`` of a ``classify`` answer (minimize it to push inputs away from class ``c``)."""
    c = _class_index(c, "class")
    return ProbabilityReduce(lambda probs: probs[:, c])


class LayerObjective:
    """``fun(X) -> (n,)``: each row of ``X`` is one dense request through ``layer``.

    Args:
        layer: the query layer (its ledger answers repeats free; its budget is shared).
        reduce: maps one answer's output to a float; when it also has ``many(outputs) ->
            (n,)`` (``ProbabilityReduce``), a batch is reduced in one call.
        shape: input shape of one example, e.g. ``(3, 32, 32)``; rows are reshaped to
            ``(1, *shape)``. Default ``(d,)``.
        kind: the request kind (default ``classify``).
        field: the payload key holding the input (default ``inputs``).
        params: request params (JSON data).
        dtype: numpy dtype the rows are cast to before keying and sending (default float32,
            what classifiers compute in); None keeps the dtype of ``X``.

    Attributes:
        meters_queries: True: this objective counts and budgets its own queries.
        budget: the layer's ``Budget``.
        nsent: rows the target really answered (what the budget was charged for).
        ncached: rows answered free (ledger hits, repeats within a batch).
    """

    meters_queries = True

    def __init__(self, layer: QueryLayer, *, reduce: Reduce,
                 shape: Sequence[int] | None = None, kind: str = "classify",
                 field: str = "inputs", params: dict | None = None,
                 dtype: str | np.dtype | None = "float32") -> None:
        if not isinstance(layer, QueryLayer):
            raise InputError(f"layer must be a QueryLayer, got {type(layer).__name__}")
        if not callable(reduce):
            raise InputError(f"reduce must be callable as reduce(output) -> float, got "
                             f"{type(reduce).__name__}")
        if kind not in KINDS:
            raise InputError(f"unknown request kind {kind!r}; choose one of {', '.join(KINDS)}")
        if shape is not None and (not all(isinstance(s, int) and s > 0 for s in shape)
                                  or len(shape) == 0):
            raise InputError(f"shape must be positive integers, e.g. (3, 32, 32), got {shape!r}")
        self.layer = layer
        self.reduce = reduce
        self.shape = None if shape is None else tuple(shape)
        self.kind = kind
        self.field = field
        self.params = dict(params or {})
        self.dtype = None if dtype is None else np.dtype(dtype)
        self.nsent = 0
        self.ncached = 0

    @property
    def budget(self) -> Budget:
        """The budget shared with the layer."""
        return self.layer.budget

    def requests(self, X: Any) -> list[Request]:
        """The dense requests for the rows of ``X`` (n, d): numpy array or torch tensor."""
        rows = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
        if rows.ndim != 2 or rows.shape[0] == 0:
            raise InputError(f"objective batch must have shape (n, d), got {rows.shape}")
        shape = self.shape or (rows.shape[1],)
        if math.prod(shape) != rows.shape[1]:
            raise InputError(f"rows of {rows.shape[1]} values cannot be reshaped to {shape}; "
                             f"give shape with prod(shape) == d")
        if self.dtype is not None:
            rows = rows.astype(self.dtype, copy=False)
        return Request.dense_batch(self.kind, self.field, rows.reshape(len(rows), 1, *shape),
                                   self.params)

    def __call__(self, X: Any) -> Any:
        """Values (n,) for the rows of ``X``: a tensor of ``X``'s dtype and device for a float
        tensor, else a float64 numpy array. Raises ``BudgetExceeded`` sending nothing when the
        rows to be sent do not fit the budget."""
        requests = self.requests(X)
        stats = self.layer.stats
        sent, cached = stats.queries, stats.cached_queries  # one query per row
        try:
            responses = self.layer.submit(requests, all_or_nothing=True)
        finally:
            self.nsent += stats.queries - sent
            self.ncached += stats.cached_queries - cached
        outputs = [r.output for r in responses]
        many = getattr(self.reduce, "many", None)  # a batched form (ProbabilityReduce)
        values = (many(outputs) if many is not None else
                  np.array([self.reduce(output) for output in outputs], dtype=np.float64))
        if isinstance(X, torch.Tensor) and X.is_floating_point():
            return torch.from_numpy(values).to(device=X.device, dtype=X.dtype)
        return values


def as_objective(source: QueryLayer | Target, *, reduce: Reduce,
                 ledger: Ledger | None = None, budget: Budget | int | None = None,
                 **options: Any) -> LayerObjective:
    """A ``LayerObjective`` over ``source``: a ``QueryLayer``, or a ``Target`` wrapped in a new
    layer with ``ledger`` and ``budget``. ``options`` go to ``LayerObjective`` (``shape``,
    ``kind``, ``field``, ``params``, ``dtype``)."""
    if isinstance(source, QueryLayer):
        if ledger is not None or budget is not None:
            raise InputError("a QueryLayer already has its ledger and budget; pass them to "
                             "QueryLayer, or pass a Target here")
        return LayerObjective(source, reduce=reduce, **options)
    if isinstance(source, Target):
        return LayerObjective(QueryLayer(source, ledger=ledger, budget=budget), reduce=reduce,
                              **options)
    raise InputError(f"source must be a QueryLayer or a Target, got {type(source).__name__}")
