"""What a Private-GSD fit keeps in its run folder so that a killed fit resumes without
measuring (and spending privacy) twice.

* ``measurements.npz``, written at the start of every stage (one-shot measurement or adaptive
  round) before its GA runs: every noisy answer measured so far (DP outputs, safe to store),
  the noise generator's state after the stage's draws, the GA's starting table and seed, and
  the generations run before the stage. Nothing else derived from the private data.
* ``checkpoint.pkl``, every few GA generations and at the end of a stage: the engine's
  ``PopulationSearch.state_dict`` (elite, random state), the early-stopping window and the
  generations run in the stage. It holds synthetic tables and their counts only: the noisy
  answers post-processed.

Both are written atomically (a temporary file renamed over the old one), so a kill leaves the
previous complete version. The ledger itself is ``privacy_ledger.jsonl`` (``PrivacyLedger.
restore``).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np

from bbzo.errors import InputError
from bbzo.privacy.gsd.queries import Halfspace, Prefix, Range, Tagged, Workload
from bbzo.runs import RunFolder

MEASUREMENTS_FILE = "measurements.npz"
CHECKPOINT_FILE = "checkpoint.pkl"
_TAGS = {cls.tag: cls for cls in (Prefix, Range, Halfspace)}


def workload_key(workload: Workload) -> list:
    """JSON form of a workload: ``[tag, *columns]`` (tag "marginal" for a plain tuple)."""
    tag = workload.tag if isinstance(workload, Tagged) else "marginal"
    return [tag, *(int(c) for c in workload)]


def workload_from_key(key: list) -> Workload:
    """The workload ``workload_key`` wrote."""
    tag, *columns = key
    return tuple(columns) if tag == "marginal" else _TAGS[tag](*columns)


@dataclass
class StageStart:
    """A stage's measured state: ``measured`` (workload → noisy answers, all stages so far),
    ``rng_state`` (the noise generator after the stage's draws), ``table`` (N′, m) codes the
    GA starts from, ``seed`` of its population search, ``generations`` run before it."""

    stage: int
    measured: dict[Workload, np.ndarray]
    rng_state: dict
    table: np.ndarray
    seed: int
    generations: int


def save_stage(run: RunFolder, start: StageStart) -> None:
    """Write ``start`` to ``measurements.npz`` atomically."""
    keys = list(start.measured)
    meta = {"stage": start.stage, "rng_state": start.rng_state, "seed": start.seed,
            "generations": start.generations, "workloads": [workload_key(w) for w in keys]}
    arrays = {f"answers_{i}": start.measured[w] for i, w in enumerate(keys)}
    with run.atomic(MEASUREMENTS_FILE) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), table=start.table, **arrays)


def load_stage(run: RunFolder) -> StageStart | None:
    """The last ``save_stage`` record of ``run``, or None when there is none."""
    path = run.file(MEASUREMENTS_FILE)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            meta = json.loads(str(saved["meta"]))
            measured = {workload_from_key(k): saved[f"answers_{i}"]
                        for i, k in enumerate(meta["workloads"])}
            table = saved["table"]
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{path} is damaged ({err}); start a new --out") from None
    return StageStart(meta["stage"], measured, meta["rng_state"], table, meta["seed"],
                      meta["generations"])


def save_checkpoint(run: RunFolder, state: dict[str, Any]) -> None:
    """Write a GA checkpoint (picklable ``state``) to ``checkpoint.pkl`` atomically."""
    with run.atomic(CHECKPOINT_FILE) as tmp, open(tmp, "wb") as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)


def load_checkpoint(run: RunFolder) -> dict[str, Any] | None:
    """The last GA checkpoint of ``run`` (a file bbzo wrote there), or None."""
    path = run.file(CHECKPOINT_FILE)
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return pickle.load(f)  # noqa: S301 - written by this fit into its own run folder
