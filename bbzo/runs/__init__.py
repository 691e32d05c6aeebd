"""Run folders and the shared run driver: what every method's run writes and how it loops.

- ``folder``: ``RunFolder`` (manifest, config.json, atomic JSON, incremental JSONL, resume) and
  ``check_run_folder`` (the same checks, writing nothing).
- ``roles``: ``Roles``, the models of a run's roles behind one ledger and one budget.
- ``driver``: ``run_items``, the item loop with resume, budget stop and per-item errors.
- ``settings``: ``FieldError`` and ``field_default`` for a method's settings dataclass.
- ``reader``: ``read_run``, a finished or running run folder read without writing anything.
"""

from bbzo.runs.driver import LoopOutcome, latest_records, pending, run_items
from bbzo.runs.folder import (
    MANIFEST,
    RunFolder,
    as_run_folder,
    check_run_folder,
    device_info,
    library_versions,
)
from bbzo.runs.reader import RunView, read_run
from bbzo.runs.roles import ModelSettings, Roles
from bbzo.runs.settings import FieldError, field_default

__all__ = ["MANIFEST", "FieldError", "LoopOutcome", "ModelSettings", "Roles", "RunFolder",
           "as_run_folder", "check_run_folder", "device_info", "field_default",
           "latest_records", "library_versions", "pending", "read_run", "run_items", "RunView"]
