"""The counting layer every vector objective goes through.

Convention: ``fun(X)`` takes a batch ``X`` of shape (n, d) and returns shape (n,). Users may write
``fun`` for numpy or for torch; ``Objective`` hands ``fun`` the same kind of array the user gave
as the starting point, validates what comes back, counts every row as one query, refuses a batch
that the budget cannot afford (before calling ``fun``) and remembers the best point seen.

A ``fun`` that meters itself (``fun.meters_queries`` true, e.g. the query layer's adapter) keeps
its own ``fun.budget`` and raises ``BudgetExceeded`` itself; ``Objective`` then only counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from bbzo.blackbox.budget import Budget, as_budget
from bbzo.errors import BudgetExceeded, InputError, ObjectiveError

ArrayLike = Any  # torch.Tensor | np.ndarray | sequence of floats


def as_vector(x: ArrayLike, *, name: str = "x0") -> tuple[torch.Tensor, bool]:
    """Turn a 1-D array, tensor or list into a float tensor; report whether it came as numpy.

    numpy/list input becomes float64 (what scipy users expect); a float tensor keeps its dtype
    and device.
    """
    if isinstance(x, torch.Tensor):
        t, numpy_in = x.detach(), False
        if not t.is_floating_point():
            t = t.to(torch.float64)
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise InputError(f"{name} must be a 1-D array of numbers: {err}") from None
        numpy_in = True
    if t.ndim != 1 or t.numel() == 0:
        raise InputError(f"{name} must be a non-empty 1-D array of shape (d,), got shape "
                         f"{tuple(t.shape)}; flatten it first")
    if not torch.isfinite(t).all():
        raise InputError(f"{name} contains NaN or inf")
    return t.clone(), numpy_in


def as_points(x: ArrayLike, *, name: str = "x") -> tuple[torch.Tensor, bool, bool]:
    """Like ``as_vector`` but also accepts a batch of shape (B, d).

    Returns (points of shape (B, d), came as numpy, came as one (d,) point).
    """
    single = np.ndim(x) == 1 if not isinstance(x, torch.Tensor) else x.ndim == 1
    if single:
        t, numpy_in = as_vector(x, name=name)
        return t[None], numpy_in, True
    if isinstance(x, torch.Tensor):
        rows = list(x.detach())
    else:
        try:
            rows = list(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise InputError(f"{name} must be an array of shape (d,) or (B, d): {err}") from None
    if np.ndim(x) != 2 or not rows:
        raise InputError(f"{name} must have shape (d,) or (B, d), got shape {np.shape(x)}")
    vectors = [as_vector(r, name=f"each row of {name}") for r in rows]
    return torch.stack([v for v, _ in vectors]), vectors[0][1], False


def meters_queries(fun: Any) -> bool:
    """Whether ``fun`` meters its own queries (budget and ledger of its own)."""
    return bool(getattr(fun, "meters_queries", False))


def resolve_budget(fun: Any, budget: Budget | int | None) -> Budget:
    """The budget calls of ``fun`` spend: ``fun.budget`` for a self-metering fun (``budget``
    must then be None or that object), else ``as_budget(budget)``."""
    if not meters_queries(fun):
        return as_budget(budget)
    own = getattr(fun, "budget", None)
    if not isinstance(own, Budget):
        raise InputError("a fun with meters_queries must have a bbzo.Budget as fun.budget")
    if budget is not None and budget is not own:
        raise InputError("this fun meters its own queries: set the budget on it (fun.budget), "
                         "not with budget=")
    return own


class Objective:
    """A counted, budgeted, validated batched objective ``X (n, d) -> (n,)``.

    Args:
        fun: the user's batched objective.
        like: a (d,) tensor fixing dimension, dtype and device of the points.
        numpy_io: hand ``fun`` numpy arrays (True) or torch tensors (False).
        budget: a ``Budget``, a max number of queries, or None. With a self-metering ``fun``
            the budget is ``fun.budget``: leave this None (or pass that same object).

    Attributes:
        nqueries: rows evaluated (a self-metering fun may serve some from its ledger).
        ncalls: calls of ``fun``.
        metered: ``fun`` meters itself.
    """

    def __init__(self, fun: Callable[[Any], Any], like: torch.Tensor, *, numpy_io: bool = False,
                 budget: Budget | int | None = None) -> None:
        if not callable(fun):
            raise InputError(f"fun must be callable as fun(X) with X of shape (n, d), got "
                             f"{type(fun).__name__}")
        self.metered = meters_queries(fun)
        self.budget = resolve_budget(fun, budget)
        self.fun = fun
        self.dim = like.numel()
        self.dtype = like.dtype
        self.device = like.device
        self.numpy_io = numpy_io
        self.nqueries = 0
        self.ncalls = 0
        self.best_x: torch.Tensor | None = None
        self.best_fun = float("inf")

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        """Evaluate a batch; returns a (n,) tensor of the points' dtype."""
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise InputError(f"objective batch must have shape (n, {self.dim}), got "
                             f"{tuple(X.shape)}")
        n = X.shape[0]
        arg = X.detach().cpu().numpy() if self.numpy_io else X
        try:  # a metered fun refuses an unaffordable batch itself, spending nothing
            out = self.fun(arg) if self.metered else self.budget.reserve(queries=n)
        except BudgetExceeded as err:
            raise BudgetExceeded(str(err), best_x=self.export(self.best_x),
                                 best_fun=self.best_fun if self.best_x is not None else None,
                                 nqueries=self.nqueries) from None
        if not self.metered:
            out = self.fun(arg)
        self.nqueries += n
        self.ncalls += 1
        y = check_values(out, n, dtype=self.dtype, device=self.device)
        i = int(torch.argmin(y))
        if float(y[i]) < self.best_fun:
            self.best_fun = float(y[i])
            self.best_x = X[i].detach().clone()
        return y

    @property
    def nsent(self) -> int:
        """Rows really sent: ``fun.nsent`` when the fun reports it (ledger hits are free),
        else ``nqueries``."""
        sent = getattr(self.fun, "nsent", None)
        return sent if isinstance(sent, int) and not isinstance(sent, bool) else self.nqueries

    def export(self, x: torch.Tensor | None) -> Any:
        """A point in the user's own array type (numpy in, numpy out)."""
        if x is None:
            return None
        return x.detach().cpu().numpy() if self.numpy_io else x.detach().clone()


def check_values(y: Any, n: int, *, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Check what an objective returned for a batch of ``n`` points: shape (n,) or (n, 1), all
    finite. Returns a (n,) tensor of ``dtype`` on ``device``; raises ``ObjectiveError`` otherwise.
    """
    try:
        t = y.detach() if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))
    except (TypeError, ValueError) as err:
        raise ObjectiveError(f"objective returned something that is not an array: {err}") \
            from None
    if t.shape == (n, 1):
        t = t.reshape(n)
    if t.shape != (n,):
        raise ObjectiveError(f"objective must return shape ({n},) for a batch of {n} points, "
                             f"got {tuple(t.shape)}; write fun(X) to return one value per row")
    t = t.to(device=device, dtype=dtype)
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ObjectiveError(f"objective returned NaN or inf for {bad} of {n} points; "
                             f"bound the loss or lower mu/lr")
    return t
