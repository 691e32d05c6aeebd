"""The exceptions bbzo raises. Every one carries a single readable line for the user."""

from __future__ import annotations

from typing import Any


class BbzoError(Exception):
    """Base class of every error bbzo raises on purpose."""


class InputError(BbzoError, ValueError):
    """A caller passed something bbzo cannot use; the message says what and how to fix it."""


class ObjectiveError(BbzoError):
    """The black-box objective misbehaved: wrong output shape, NaN or inf."""


class TargetError(BbzoError):
    """A model target could not be loaded or answered with an unrecoverable error."""


class BudgetExceeded(BbzoError):
    """A query budget would be exceeded by the next batch; nothing over the limit was sent.

    Attributes:
        best_x: best point evaluated so far (same type as the user's input), or None.
        best_fun: objective value at ``best_x`` (float), or None.
        nqueries: queries spent when the limit was hit.
    """

    def __init__(self, message: str, *, best_x: Any = None, best_fun: float | None = None,
                 nqueries: int = 0) -> None:
        super().__init__(message)
        self.best_x = best_x
        self.best_fun = best_fun
        self.nqueries = nqueries


class PrivacyBudgetExceeded(BbzoError):
    """A differential-privacy budget (epsilon, delta) would be exceeded."""


class TransientError(TargetError):
    """A target failure worth retrying: HTTP 408/409/429/5xx, a timeout, a dropped connection.

    Targets raise it; the query layer's retry policy catches it.

    Attributes:
        status: HTTP status code, or None for timeouts and connection errors.
        retry_after: seconds the server asked us to wait (``Retry-After``), or None.
    """

    def __init__(self, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class PermanentError(TargetError):
    """A target failure that retrying cannot fix (HTTP 400/401/403/404...): fail at once.

    Attributes:
        status: HTTP status code, or None.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
