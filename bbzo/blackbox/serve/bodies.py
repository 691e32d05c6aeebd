"""Request bodies: bytes in, JSON data out, or an ``ApiError`` (400) saying what is wrong.

A body must be UTF-8, JSON without ``NaN``/``Infinity``, nested at most ``MAX_DEPTH`` deep, and
free of lone UTF-16 surrogates (``"\\ud800"`` is valid JSON but no text: it could not be
tokenised, logged or answered), so everything past this point can encode every string.
"""

from __future__ import annotations

import json

from bbzo.blackbox.serve.protocol import ApiError

MAX_DEPTH = 32  # nesting of arrays/objects; an OpenAI body needs 4


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _path(parts: tuple) -> str | None:
    """``("messages", 0, "content")`` -> ``"messages[0].content"`` (None for the whole body)."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check(data: object) -> None:
    """400 at the first lone surrogate (key or string) or nesting beyond ``MAX_DEPTH``."""
    todo: list[tuple[tuple, object]] = [((), data)]
    while todo:
        where, value = todo.pop()
        if len(where) > MAX_DEPTH:
            raise ApiError(400, f"the body is nested more than {MAX_DEPTH} levels deep",
                           param=_path(where[:1]))
        if isinstance(value, str) and _has_surrogate(value):
            raise ApiError(400, "a string holds a lone UTF-16 surrogate (e.g. \\ud800), which "
                                "is not text; send valid Unicode", param=_path(where))
        if isinstance(value, dict):
            for key, item in value.items():
                if _has_surrogate(key):
                    raise ApiError(400, "an object key holds a lone UTF-16 surrogate; send "
                                        "valid Unicode", param=_path(where))
                todo.append(((*where, key), item))
        elif isinstance(value, list):
            todo.extend(((*where, i), item) for i, item in enumerate(value))


def parse_json(raw: bytes) -> object:
    """The JSON data of a request body (see the module doc); ``ApiError`` 400 if it is bad."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(400, f"the body is not valid UTF-8 (byte {err.start}); send UTF-8 "
                            f"JSON") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:
        raise ApiError(400, f"the body is not valid JSON: {err}") from None
    _check(data)
    return data
