"""Stop sequences, OpenAI style: a completion ends as soon as its text contains one of them.

``params["stop"]`` is a string or a list of 1 to ``MAX_STOPS`` non-empty strings. The text
handed back excludes the stop string and everything after it, and the finish reason is
``"stop"``. ``StopWatch`` decodes a completion a few tokens at a time (never the whole text per
token) so a local model can end each row of a batch at its own stop.
"""

from __future__ import annotations

from collections.abc import Callable

from bbzo.errors import InputError

MAX_STOPS = 4  # OpenAI's limit
REPLACEMENT = "\ufffd"  # what a token holding part of a multi-byte character decodes to


def parse_stop(value: object) -> tuple[str, ...]:
    """The stop strings of a ``stop`` value (None: none); ``InputError`` naming ``stop`` if it is
    not a non-empty string or a list of 1..4 of them."""
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not (isinstance(stops, list) and 1 <= len(stops) <= MAX_STOPS
            and all(isinstance(s, str) and s for s in stops)):
        raise InputError(f"stop must be a non-empty string or a list of 1 to {MAX_STOPS} "
                         f"non-empty strings, got {value!r}")
    return tuple(stops)


def cut(text: str, stops: tuple[str, ...]) -> str | None:
    """``text`` up to its first stop string, or None when it holds none."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[:min(found)] if found else None


class StopWatch:
    """Watches one completion, token by token, for its stop strings.

    Args:
        stops: the stop strings (non-empty).
        decode: token ids → text (the tokenizer's decode).

    Each ``push`` decodes only the tokens since the last complete character (a window of a few
    tokens), and searches only the text that can hold a stop string ending in the new text.
    """

    def __init__(self, stops: tuple[str, ...], decode: Callable[[list[int]], str]) -> None:
        self.stops = stops
        self.decode = decode
        self.text = ""
        self._ids: list[int] = []
        self._start = 0  # the window being decoded begins here
        self._done = 0  # ids before this are in ``text``
        self._reach = max(len(s) for s in stops) - 1  # old characters a new match may use

    def push(self, token: int) -> bool:
        """Add the next token; True once the text decoded so far contains a stop string."""
        self._ids.append(token)
        known = self.decode(self._ids[self._start:self._done])
        window = self.decode(self._ids[self._start:])
        if len(window) <= len(known) or window.endswith(REPLACEMENT):
            return False  # no complete new character yet
        since = max(0, len(self.text) - self._reach)
        self.text += window[len(known):]
        self._start, self._done = self._done, len(self._ids)
        tail = self.text[since:]
        return any(s in tail for s in self.stops)
