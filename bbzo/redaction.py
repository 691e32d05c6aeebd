"""Keeping secrets out of everything bbzo writes: run folders, ledgers, logs, errors.

Four rules, shared by every writer:
- a value under a secret-looking name (``api_key``, ``password``, ``*_token``...) is masked;
- text that looks like a credential (``sk-...``, ``hf_...``, ``Bearer ...``) is masked;
- credentials inside URLs are masked: ``https://user:pass@host`` → ``https://[REDACTED]@host``,
  and query values under secret-looking names (``?api_key=...``, ``&token=...``, ``&key=...``);
- the values of secret-looking environment variables (``OPENAI_API_KEY``...) are masked
  wherever they appear, raw or JSON-escaped.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

REDACTED = "[REDACTED]"

SECRET_NAME = re.compile(r"api_?key|secret|passw(or)?d|credential|private_?key|access_?key|"
                         r"cookie|authorization|^auth$|(^|_)(auth_?)?token$", re.IGNORECASE)
SECRET_TEXT = re.compile(r"sk-[A-Za-z0-9_\-]{16,}"            # OpenAI-style keys
                         r"|hf_[A-Za-z0-9]{20,}"              # Hugging Face tokens
                         r"|(?<=Bearer )[A-Za-z0-9._~+/\-]+=*")     # bearer tokens
URL_USERINFO = re.compile(r"(?<=://)[^/?#@\s]+(?=@)")
URL_QUERY_VALUE = re.compile(r"(?<=[?&;])([^=&#\s]+)=([^&#\s]*)")
MIN_SECRET_LENGTH = 8  # shorter environment values are too common to mask


def is_secret_name(name: Any) -> bool:
    """Whether a key, option or environment variable name looks like it holds a secret."""
    return bool(SECRET_NAME.search(str(name).lstrip("-").replace("-", "_")))


def redact_text(text: str) -> tuple[str, int]:
    """``text`` with secrets masked, and how many were masked."""
    count = 0
    for name, value in os.environ.items():
        if is_secret_name(name) and len(value) >= MIN_SECRET_LENGTH:
            for form in {value, json.dumps(value)[1:-1]}:
                count += text.count(form)
                text = text.replace(form, REDACTED)
    text, n = SECRET_TEXT.subn(REDACTED, text)
    text, users = URL_USERINFO.subn(REDACTED, text)
    queries = 0

    def query_value(match: re.Match) -> str:
        nonlocal queries
        name = match.group(1)
        if not (is_secret_name(name) or name.lower() in ("key", "sig", "signature")):
            return match.group(0)
        queries += 1
        return f"{name}={REDACTED}"

    if "=" in text:
        text = URL_QUERY_VALUE.sub(query_value, text)
    return text, count + n + users + queries


def redact_data(obj: Any) -> Any:
    """A copy of JSON-like ``obj`` with values under secret names and secret text masked."""
    if isinstance(obj, dict):
        return {k: REDACTED if is_secret_name(k) else redact_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_data(v) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)[0]
    return obj


def redact_argv(argv: list[str]) -> list[str]:
    """A command line with the values of secret-looking options (``--api-key X``) masked."""
    out: list[str] = []
    previous = ""
    for arg in argv:
        flag, eq, _ = arg.partition("=")
        if previous.startswith("-") and "=" not in previous and is_secret_name(previous):
            out.append(REDACTED)
        elif eq and flag.startswith("-") and is_secret_name(flag):
            out.append(f"{flag}={REDACTED}")
        else:
            out.append(redact_text(arg)[0])
        previous = arg
    return out
