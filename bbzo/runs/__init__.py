"""Run folders and the shared run driver: what every method's run writes and how it loops.

- ``folder``: ``RunFolder`` (manifest, config.json, atomic JSON, incremental JSONL, resume).
- ``roles``: ``Roles``, the models of a run's roles behind one ledger and one budget.
- ``driver``: ``run_items``, the item loop with resume, budget stop and per-item errors.
"""

from bbzo.runs.folder import (
    MANIFEST,
    RunFolder,
    as_run_folder,
    check_run_folder,
    device_info,
    library_versions,
)

__all__ = ["MANIFEST", "RunFolder", "as_run_folder", "check_run_folder", "device_info",
           "library_versions"]
