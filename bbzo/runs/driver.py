"""The item loop every method's run shares: resume, incremental records, budget stop, errors.

A run attacks (or scores, or releases) a list of items, one record per item appended to a JSONL
file as soon as the item is done. ``run_items`` skips the items that already have a record
(resume), stops at the first ``BudgetExceeded`` (``stopped`` holds its message; the item in
progress is done again on the next resume, its requests answered from the ledger), and turns
any other ``BbzoError`` raised for one item into that item's error record
``{"id": ..., "error": "<one line>"}`` and goes on. A resume does not retry an errored item
unless ``retry_errors``; the latest record of an id is the one that counts
(``latest_records``). Other exceptions are bugs and end the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from bbzo.errors import BbzoError, BudgetExceeded
from bbzo.runs.folder import RunFolder

Item = TypeVar("Item")
Progress = Callable[[str, int, int], None]  # (label, done, total)


@dataclass
class LoopOutcome:
    """What one ``run_items`` call did.

    Attributes:
        stopped: the budget's message when it ran out before every item was done, else None.
        attempted: items worked on in this call (finished, errored or cut by the budget).
        errors: items recorded as errors in this call.
    """

    stopped: str | None
    attempted: int
    errors: int


def latest_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per ``id``, the last written, in the order ids first appeared."""
    latest: dict[Any, dict[str, Any]] = {}
    for record in records:
        latest[record["id"]] = record
    return list(latest.values())


def is_error(record: dict[str, Any]) -> bool:
    """Whether ``record`` is a per-item error record."""
    return record.get("error") is not None


def pending(items: Sequence[Item], item_id: Callable[[Item], Any],
            records: Iterable[dict[str, Any]], *, retry_errors: bool = False) -> list[Item]:
    """The items without a record yet (and, with ``retry_errors``, those whose latest record
    is an error), in their order."""
    done = {r["id"] for r in latest_records(records) if not (retry_errors and is_error(r))}
    return [item for item in items if item_id(item) not in done]


def error_line(err: BaseException) -> str:
    """A one-line description of a per-item failure."""
    return " ".join(f"{type(err).__name__}: {err}".split())


def run_items(run: RunFolder, items: Sequence[Item], work: Callable[[Item], dict[str, Any]], *,
              item_id: Callable[[Item], Any], results: str = "results.jsonl",
              progress: Progress | None = None, label: str = "items",
              total: int | None = None) -> LoopOutcome:
    """Run ``work(item)`` for each of ``items`` (those still to do: see ``pending``) and append
    each record to ``results`` in ``run`` as soon as it is returned (module doc).

    Args:
        run: the run folder.
        items: the items to work on now.
        work: one item -> its record (a dict with at least ``id``).
        item_id: the id of an item, as in its record.
        results: JSONL file name in ``run``.
        progress: called as ``progress(label, done, total)`` before each item and at the end.
        label: progress label.
        total: the whole run's item count for progress (default ``len(items)``); items done
            earlier count as done.
    """
    total = len(items) if total is None else total
    done = total - len(items)
    stopped, attempted, errors = None, 0, 0
    for item in items:
        if progress is not None:
            progress(label, done, total)
        attempted += 1
        try:
            record = work(item)
        except BudgetExceeded as err:
            stopped = str(err)
            break
        except BbzoError as err:
            record = {"id": item_id(item), "error": error_line(err)}
            errors += 1
        run.append_jsonl(results, record)
        done += 1
    if progress is not None:
        progress(label, done, total)
    return LoopOutcome(stopped, attempted, errors)
