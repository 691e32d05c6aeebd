"""Settings dataclasses of run methods: errors that name the field, defaults read from fields.

A method's config (``SecaConfig``...) validates each field through ``check_fields``, so an error
is a ``FieldError`` naming the field; the command line maps the field back to its option
(``--similarity``) and reports a usage error. ``field_default`` lets a command take its
defaults from the dataclass instead of repeating them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from bbzo.errors import InputError


class FieldError(InputError):
    """A bad value of one settings field.

    Attributes:
        field: the field's name (``similarity``).
        why: what is wrong, without the name (``must be a fraction in (0, 1], got nan``).
    """

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"{field} {why}")
        self.field = field
        self.why = why


def check_fields(checks: Iterable[tuple[str, Callable[[], object]]]) -> None:
    """Run ``(field, check)`` pairs in order; the first ``InputError`` becomes a ``FieldError``
    for its field."""
    for name, check in checks:
        try:
            check()
        except FieldError:
            raise
        except InputError as err:
            message = str(err)
            why = message[len(name) + 1:] if message.startswith(f"{name} ") else message
            raise FieldError(name, why) from None


def field_default(cls: type, name: str) -> Any:
    """The default value of the dataclass field ``name`` of ``cls``."""
    for field in dataclasses.fields(cls):
        if field.name == name:
            if field.default is not dataclasses.MISSING:
                return field.default
            if field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
            raise InputError(f"{cls.__name__}.{name} has no default")
    raise InputError(f"{cls.__name__} has no field {name!r}")
