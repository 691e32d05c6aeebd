"""Run folders: everything a run leaves behind, written so that a crash loses at most one record.

A run folder holds ``config.json`` (options, seed, library versions, platform), result files
(JSONL appended one record at a time, flushed and fsynced) and ``summary.json``. JSON files are
written atomically (temporary file in the same folder, then ``os.replace``), so a reader never
sees half a file. Values under keys that look like secrets (``api_key``, ``password``, ...) are
replaced by ``"[REDACTED]"`` (``bbzo.redaction``) before anything reaches the disk.

bbzo writes only what it created: the manifest ``.bbzo-run.json``, written when the folder is
created, lists every file bbzo made there and the hash of the run's options. Repair on resume
(a torn last JSONL line, a leftover temporary file) touches only listed files; a non-empty
folder without a manifest is not a bbzo run and is refused, never repaired (except a run made
before manifests existed: its config.json, summary.json and the files the summary lists are
adopted into a new manifest, ``legacy_files``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bbzo.errors import InputError
from bbzo.redaction import redact_argv, redact_data

MANIFEST = ".bbzo-run.json"
LIBRARIES = ("bbzo", "torch", "transformers", "sentence-transformers", "numpy", "scipy",
             "scikit-learn", "openai", "click", "rich", "matplotlib")

def library_versions() -> dict[str, str | None]:
    """Installed versions of Python and bbzo's main libraries (None where not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info() -> dict[str, str | int | bool]:
    """The compute device torch would use: CUDA GPU name, Apple MPS, or CPU with thread count."""
    import torch

    if torch.cuda.is_available():
        return {"device": "cuda", "name": torch.cuda.get_device_name(0),
                "gpus": torch.cuda.device_count()}
    if torch.backends.mps.is_available():
        return {"device": "mps", "name": "Apple GPU"}
    return {"device": "cpu", "name": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "cpus": os.cpu_count() or 1}


def _to_json(obj: Any, *, indent: int | None) -> str:
    try:
        return json.dumps(redact_data(obj), indent=indent, allow_nan=True, default=_default)
    except TypeError as err:
        raise InputError(f"cannot store this value as JSON: {err}") from None


def _default(value: Any) -> Any:
    """numpy scalars/arrays and paths → plain JSON values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def legacy_files(folder: Path) -> list[str] | None:
    """The files of a bbzo run made before run folders had manifests: ``config.json`` (written
    by ``write_config``), ``summary.json`` and the files its ``files`` list names; None when
    ``folder`` holds no such run (both files are needed to tell)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    keys = {"options", "seed", "versions", "created_at"}
    if not (isinstance(config, dict) and keys <= set(config) and isinstance(summary, dict)
            and isinstance(summary.get("files"), list)):
        return None
    names = {"config.json", "summary.json", *(n for n in summary["files"] if isinstance(n, str))}
    return sorted(n for n in names if n and Path(n).name == n and (folder / n).is_file())


def check_run_folder(path: str | os.PathLike, *, resume: bool = False) -> Path:
    """Whether ``path`` can hold a new run (or, with ``resume``, continue one), checked without
    touching the disk; ``InputError`` naming the folder and the fix otherwise."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"run folder {folder} is a file; choose a folder for --out")
    if not folder.is_dir() or all(p.name == MANIFEST for p in folder.iterdir()):
        return folder  # new, empty, or opened by bbzo and left without any other file
    if not (folder / MANIFEST).is_file() and legacy_files(folder) is None:
        raise InputError(f"run folder {folder} is not empty and is not a bbzo run (no "
                         f"{MANIFEST}); bbzo writes only into folders it created: choose a new "
                         f"or empty --out")
    if not resume:
        raise InputError(f"run folder {folder} is not empty; pass --resume to continue "
                         f"that run or choose a new --out")
    return folder


def options_hash(options: Any, seed: int) -> str:
    """SHA-256 of a run's stored options and seed (as written to ``config.json``)."""
    stored = {"options": json.loads(_to_json(options, indent=None)), "seed": seed}
    return hashlib.sha256(json.dumps(stored, sort_keys=True).encode()).hexdigest()


def check_same_settings(path: str | os.PathLike, options: dict[str, Any], seed: int) -> None:
    """``InputError`` when the run in ``path`` was started with other options or seed (read from
    its ``config.json``, else the hash in its manifest); nothing is written. A folder without
    either (a new run) passes."""
    folder = Path(path)
    stored = {"options": json.loads(_to_json(options, indent=None)), "seed": seed}
    if (folder / "config.json").is_file():
        try:
            config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise InputError(f"{folder / 'config.json'} is not valid JSON ({err}); delete it or "
                             f"use a new --out") from None
        old = {"options": config.get("options"), "seed": config.get("seed")}
        if old != stored:
            raise InputError(f"run folder {folder} was started with other settings "
                             f"({_differences(old, stored)}); use the same options or a new "
                             f"--out")
    elif (folder / MANIFEST).is_file():
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise InputError(f"{folder / MANIFEST} is not valid JSON ({err}); use a new "
                             f"--out") from None
        known = manifest.get("options_sha256")
        if known is not None and known != options_hash(options, seed):
            raise InputError(f"run folder {folder} lost its config.json and was started with "
                             f"other settings; use the same options or a new --out")


class RunFolder:
    """A run's output folder.

    Opening one creates it (parents too) with its manifest, or, with ``resume``, repairs the
    files bbzo made in it (module doc). Check first with ``check_run_folder`` when nothing may
    be written before other inputs are validated.

    Args:
        path: folder to create or, with ``resume``, to continue.
        resume: allow a folder that already holds a run; without it a non-empty folder is
            refused so that one run never overwrites another.
    """

    def __init__(self, path: str | os.PathLike, *, resume: bool = False) -> None:
        self.path = check_run_folder(path, resume=resume)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot create run folder {self.path}: {err.strerror}; choose "
                             f"another --out") from None
        if not self.manifest_path.exists():
            self._write_manifest({"bbzo": library_versions()["bbzo"],
                                  "files": legacy_files(self.path) or [],
                                  "options_sha256": None})
        self.manifest: dict[str, Any] = self.read_json(MANIFEST)
        self.resumed = resume and (self.path / "config.json").exists()
        self._repair()

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def owned(self) -> list[str]:
        """Names of the files bbzo made in this folder (from the manifest)."""
        return list(self.manifest["files"])

    def own(self, name: str) -> Path:
        """Path of ``name``, recorded in the manifest as a file bbzo makes (before it exists)."""
        path = self.file(name)
        if name not in self.manifest["files"]:
            self.manifest["files"] = sorted([*self.manifest["files"], name])
            self._write_manifest(self.manifest)
        return path

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        text = _to_json(manifest, indent=2) + "\n"
        with _atomic(self.path, self.manifest_path) as tmp:
            tmp.write_text(text, encoding="utf-8")

    def _repair(self) -> None:
        """Remove leftover temporary files and cut torn JSONL tails, of owned files only."""
        owned = {*self.manifest["files"], MANIFEST}
        for leftover in self.path.glob(".*.tmp"):
            made_for = leftover.name[1:].rsplit(".", 2)[0]  # .<name>.<hex>.tmp
            if leftover.name in owned or made_for in owned:
                leftover.unlink()
        for name in sorted(owned):
            if name.endswith(".jsonl") and (self.path / name).is_file():
                _drop_torn_tail(self.path / name)

    def file(self, name: str) -> Path:
        """Path of a file in the folder (``name`` must be a plain file name)."""
        if not name or Path(name).name != name or name in (".", ".."):
            raise InputError(f"run file name must be a plain file name, got {name!r}")
        return self.path / name

    @contextlib.contextmanager
    def atomic(self, name: str) -> Iterator[Path]:
        """Yield a temporary path to write; on success it replaces ``name`` in one step.

        On error the temporary file is removed and ``name`` keeps its old content.
        """
        with _atomic(self.path, self.own(name)) as tmp:
            yield tmp

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as indented JSON, atomically, secrets redacted."""
        text = _to_json(obj, indent=2) + "\n"
        with self.atomic(name) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return self.file(name)

    def read_json(self, name: str) -> Any:
        try:
            return json.loads(self.file(name).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise InputError(f"{self.file(name)} is not valid JSON ({err}); delete it or use a "
                             f"new --out") from None

    def write_config(self, options: dict[str, Any], seed: int) -> dict[str, Any]:
        """Record the run's options and seed with library versions, platform and time.

        On resume the stored options and seed must match (``check_same_settings``); the time
        of the resume is added to ``resumed_at``. The manifest keeps the options' hash, so a
        deleted ``config.json`` cannot let a resume change them.
        """
        check_same_settings(self.path, options, seed)
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        if self.file("config.json").exists():
            config = self.read_json("config.json")
            config["resumed_at"] = [*config.get("resumed_at", []), now]
        else:
            config = {"options": json.loads(_to_json(options, indent=None)), "seed": seed,
                      "versions": library_versions(), "device": device_info(),
                      "platform": platform.platform(), "argv": redact_argv(sys.argv),
                      "created_at": now}
        digest = options_hash(options, seed)
        if self.manifest.get("options_sha256") != digest:
            self.manifest["options_sha256"] = digest
            self._write_manifest(self.manifest)
        self.write_json("config.json", config)
        return config

    def append_jsonl(self, name: str, record: dict[str, Any]) -> None:
        """Append one record as a line, flushed and fsynced before returning."""
        line = _to_json(record, indent=None)
        with open(self.own(name), "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        """All records of a JSONL file ([] when it does not exist yet)."""
        return read_jsonl_file(self.file(name))

    def write_summary(self, obj: dict[str, Any]) -> Path:
        return self.write_json("summary.json", obj)


def read_jsonl_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a JSONL file, read without changing it ([] when it does not exist).

    A last line without its newline that does not parse (a write cut by a crash) is left
    out; any other line that does not parse is an ``InputError`` naming its number.
    """
    path = Path(path)
    if not path.exists():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if lineno == len(lines):  # no newline after it: torn by a crash
                break
            raise InputError(f"{path}:{lineno} is not valid JSON; repair or delete "
                             f"that line") from None
    return records


@contextlib.contextmanager
def _atomic(folder: Path, target: Path) -> Iterator[Path]:
    """A temporary path in ``folder`` that replaces ``target`` (fsynced) when the block ends
    without error; removed otherwise."""
    tmp = folder / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # honours umask
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line left half-written by a crash (no trailing newline)."""
    with open(path, "r+b") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)


def _differences(old: dict, new: dict, prefix: str = "") -> str:
    """Readable list of the keys whose values differ, e.g. ``seed: 0 → 1``."""
    parts = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _differences(a, b, f"{prefix}{key}.")
            parts.extend([inner] if inner else [])
        elif a != b:
            parts.append(f"{prefix}{key}: {a!r} → {b!r}")
    return ", ".join(parts)


def as_run_folder(out: str | os.PathLike | RunFolder, *, resume: bool = False) -> RunFolder:
    """Accept a ``RunFolder`` or open one at a path."""
    return out if isinstance(out, RunFolder) else RunFolder(out, resume=resume)
