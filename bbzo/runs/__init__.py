"""Run folders and what every method's run needs: ``folder`` (config.json, atomic JSON,
incremental JSONL, resume)."""

from bbzo.runs.folder import RunFolder, as_run_folder, device_info, library_versions

__all__ = ["RunFolder", "as_run_folder", "device_info", "library_versions"]
