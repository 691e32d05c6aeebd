"""``load_target(spec, **options)``: one string names any target bbzo can query.

Accepted forms (``options`` go to the target's constructor):

| spec | target |
| --- | --- |
| ``hf:<alias-or-folder>`` | ``HFTarget``, a local causal LM (``hf:smollm2-135m-instruct``) |
| ``embed[:<alias-or-folder>]`` | ``EmbeddingTarget`` (default ``minilm-l6``) |
| ``openai:<model>`` | ``OpenAITarget`` (``base_url=``, ``api_key=`` else ``$OPENAI_API_KEY``) |
| ``torch:<file.py>:<factory>`` | ``TorchClassifier`` of the module ``factory()`` returns |
| ``<folder>`` | a classifier saved by ``save_classifier`` |
| ``http(s)://...`` | ``HTTPClassifier``, a JSON endpoint |

Target modules are imported only when their spec is used, so importing bbzo stays light.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from bbzo.blackbox.targets.base import Target
from bbzo.errors import InputError

FORMS = ("hf:<alias-or-folder>", "embed[:<alias-or-folder>]", "openai:<model>",
         "torch:<file.py>:<factory>", "<folder saved by save_classifier>", "http(s)://<url>")


def _bad(spec: str, why: str) -> InputError:
    return InputError(f"bad target spec {spec!r}: {why}; accepted forms: {', '.join(FORMS)}")


def _build(spec: str, make: Callable[..., Target], *args: object, **options: object) -> Target:
    """``make(*args, **options)``, with options it does not take reported as an InputError."""
    try:
        inspect.signature(make).bind(*args, **options)
    except TypeError as err:
        raise InputError(f"target spec {spec!r} does not take these options: {err}") from None
    return make(*args, **options)


def load_target(spec: str, **options: object) -> Target:
    """The target named by ``spec`` (see the module table); ``InputError`` for a bad spec."""
    if not isinstance(spec, str) or not spec.strip():
        raise _bad(str(spec), "it is empty")
    spec = spec.strip()
    scheme, sep, rest = spec.partition(":")
    if scheme in ("http", "https") and rest.startswith("//"):
        from bbzo.blackbox.targets.classifier import HTTPClassifier
        return _build(spec, HTTPClassifier, spec, **options)
    if scheme == "embed":
        from bbzo.blackbox.targets import models
        from bbzo.blackbox.targets.embeddings import EmbeddingTarget
        return _build(spec, EmbeddingTarget, rest or models.DEFAULT_EMBEDDING, **options)
    if sep and not rest:
        raise _bad(spec, f"nothing after '{scheme}:'")
    if scheme == "hf":
        from bbzo.blackbox.targets.hf import HFTarget
        return _build(spec, HFTarget, rest, **options)
    if scheme == "openai":
        from bbzo.blackbox.targets.openai_api import OpenAITarget
        return _build(spec, OpenAITarget, rest, **options)
    if scheme == "torch":
        from bbzo.blackbox.targets.classifier import load_torch_factory
        if ":" not in rest:
            raise _bad(spec, "torch specs need a file and a factory: torch:<file.py>:<factory>")
        return _build(spec, load_torch_factory, rest, **options)
    folder = Path(spec).expanduser()
    if folder.is_dir():
        from bbzo.blackbox.targets.classifier import is_saved_classifier, load_classifier
        if not is_saved_classifier(folder):
            raise _bad(spec, "the folder holds no classifier saved by bbzo (for a transformers "
                             "model folder use hf:<folder>)")
        return _build(spec, load_classifier, folder, **options)
    raise _bad(spec, "unknown form")


def load_options(spec: str, *, base_url: str | None = None, device: str | None = None,
                 max_batch: int | None = None) -> dict[str, object]:
    """The loading options that apply to ``spec``'s form (None values are left out):
    ``base_url`` for ``openai:``, ``device`` for ``hf:`` and ``embed``, ``max_batch`` for
    ``hf:``."""
    scheme = spec.strip().partition(":")[0]
    options: dict[str, object] = {}
    if scheme == "openai" and base_url:
        options["base_url"] = base_url
    if scheme in ("hf", "embed") and device:
        options["device"] = device
    if scheme == "hf" and max_batch is not None:
        options["max_batch"] = max_batch
    return options


REMOTE_MAX_CHARS = 16_000  # about 4k tokens at 4 characters a token: fits any chat model


def check_fits(target: Target, text: str, *, where: str, share: float = 0.5) -> None:
    """``InputError`` naming ``where`` when ``text`` would take more than ``share`` of the
    target's context: counted with the target's tokenizer when it is local and has one, else
    in characters against ``REMOTE_MAX_CHARS`` for remote targets; other targets are not
    checked. The rest of the context is left for the method's prompt around the text."""
    tokenizer = getattr(target, "tokenizer", None)
    max_length = getattr(target, "max_length", None)
    if tokenizer is not None and max_length:
        size, room, unit = len(tokenizer(text)["input_ids"]), int(share * max_length), "tokens"
    elif target.remote:
        size, room, unit = len(text), int(share * REMOTE_MAX_CHARS), "characters"
    else:
        return
    if size > room:
        raise InputError(f"{where} is {size} {unit} long; {target.id} leaves room for at most "
                         f"{room}: shorten it or drop it")
