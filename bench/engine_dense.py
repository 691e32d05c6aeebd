"""Dense-query benchmark: every figure is measured side by side in this one run.

1. Overhead of the query path for dense ``classify`` requests: ``LayerObjective`` (rows ->
   dense requests -> ``QueryLayer`` with a ledger -> ``TorchClassifier``; every row new, so
   every row is sent and recorded) on a batch of 256, sent as one target call or as 4 calls of
   64 (the classifier's default ``max_batch``; the layer overlaps one call's ledger writes with
   the next call's forward), vs one raw ``target.call`` of the same 256 inputs (prebuilt
   requests) and vs the bare module (forward + softmax). Target: <= 1.2x the raw call.
2. The same batch again, answered from the ledger (time per request).
3. Ledger bytes per request and wall time per request (building, keying, the model, the
   ledger) for the same requests built as JSON nested lists (the path before dense requests)
   vs dense (payload bytes not stored, the default) vs dense with ``store_payloads=True``.

The black box is the small CNN of ``bench/engine.py`` on 1×28×28 inputs.

    python bench/engine_dense.py [--quick] [--device cpu|cuda] [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine import small_cnn  # noqa: E402

from bbzo.blackbox.protocol import Request  # noqa: E402
from bbzo.blackbox.query.layer import QueryLayer  # noqa: E402
from bbzo.blackbox.query.ledger import Ledger  # noqa: E402
from bbzo.blackbox.query.objective import LayerObjective, cross_entropy  # noqa: E402
from bbzo.blackbox.targets.classifier import TorchClassifier  # noqa: E402

SHAPE = (1, 28, 28)
D = 28 * 28
BATCH = 256
JOB = 64  # TorchClassifier's default max_batch


def ledger_bytes(path: Path) -> int:
    """Size of the SQLite file once its WAL is folded in."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return path.stat().st_size


def bench_overhead(target: TorchClassifier, folder: Path, reps: int, device: str) -> dict:
    """Seconds per batch of ``BATCH`` rows: the bare module, one raw ``target.call``, and the
    objective through a ledgered layer sending the batch as one target call (``layer_1x256``)
    or as calls of ``JOB`` rows (``layer_{n}x{JOB}``: the layer runs them concurrently, so one
    call's ledger writes overlap the next call's forward pass). Interleaved, fresh rows each
    rep; best of ``reps`` and the median of per-rep ratios to the raw call."""
    gen = torch.Generator().manual_seed(0)
    split = TorchClassifier(target.module, target.id, device=device, max_batch=JOB)
    objectives = {
        f"layer_1x{BATCH}": LayerObjective(QueryLayer(target, ledger=Ledger(
            folder / "one_call.sqlite")), reduce=cross_entropy(3), shape=SHAPE),
        f"layer_{BATCH // JOB}x{JOB}": LayerObjective(QueryLayer(split, ledger=Ledger(
            folder / "split.sqlite")), reduce=cross_entropy(3), shape=SHAPE),
    }
    times: dict[str, list[float]] = {"module": [], "target": [], **{k: [] for k in objectives}}
    for rep in range(reps + 1):  # the first rep warms up and is dropped
        X = torch.rand(BATCH, D, generator=gen)
        prebuilt = [Request("classify", {"inputs": row.reshape(1, *SHAPE)}) for row in X]
        x = X.reshape(-1, *SHAPE).to(device)
        spent = {}
        with torch.no_grad():
            start = time.perf_counter()
            target.module(x).softmax(-1).cpu()
            spent["module"] = time.perf_counter() - start
        start = time.perf_counter()
        target.call(prebuilt)
        spent["target"] = time.perf_counter() - start
        for name, objective in objectives.items():
            start = time.perf_counter()
            objective(X)
            spent[name] = time.perf_counter() - start
        if rep:
            for name, value in spent.items():
                times[name].append(value)
    out = {"batch": BATCH, "job": JOB, "reps": reps,
           "best_ms": {name: 1e3 * min(values) for name, values in times.items()}}
    for name, objective in objectives.items():
        ratios = sorted(a / b for a, b in zip(times[name], times["target"], strict=True))
        out[name] = {"over_target": min(times[name]) / min(times["target"]),
                     "over_target_median_paired": ratios[len(ratios) // 2],
                     "over_module": min(times[name]) / min(times["module"])}
        start = time.perf_counter()
        objective(X)  # the last batch again: all answered from the ledger
        out[name]["cached_us_per_request"] = 1e6 * (time.perf_counter() - start) / BATCH
        assert objective.nsent == (reps + 1) * BATCH and objective.ncached == BATCH
    return out


def bench_ledger_size(target: TorchClassifier, folder: Path, n: int) -> dict:
    """Ledger bytes and wall milliseconds per request: JSON lists vs dense payloads."""
    images = np.random.default_rng(1).random((n, *SHAPE), dtype=np.float32)
    forms = {
        "json": (lambda x: Request("classify", {"inputs": x[None].tolist()}), {}),
        "dense": (lambda x: Request("classify", {"inputs": x[None]}), {}),
        "dense_stored": (lambda x: Request("classify", {"inputs": x[None]}),
                         {"store_payloads": True}),
    }
    out = {}
    for name, (build, options) in forms.items():
        path = folder / f"size_{name}.sqlite"
        layer = QueryLayer(target, ledger=Ledger(path, **options))
        start = time.perf_counter()
        for lo in range(0, n, BATCH):
            layer.submit([build(x) for x in images[lo:lo + BATCH]])
        elapsed = time.perf_counter() - start
        layer.ledger.close()
        out[name] = {"bytes_per_request": ledger_bytes(path) / n,
                     "ms_per_request": 1e3 * elapsed / n}
    out["json_over_dense_bytes"] = (out["json"]["bytes_per_request"]
                                    / out["dense"]["bytes_per_request"])
    return out


def run(quick: bool, device: str | None = None) -> dict:
    """All figures as a dict (``quick``: few repetitions, a small ledger)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    target = TorchClassifier(small_cnn(), "bench:small-cnn", device=device, max_batch=BATCH)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        return {"device": device, "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "overhead": bench_overhead(target, folder, 3 if quick else 15, device),
                "ledger": bench_ledger_size(target, folder, BATCH if quick else 4 * BATCH),
                "load_1min": round(os.getloadavg()[0], 2)}


def report(result: dict) -> None:
    """Print ``run``'s figures."""
    o, size = result["overhead"], result["ledger"]
    best = o["best_ms"]
    print(f"[1] batch of {o['batch']} dense classify requests, {result['device']} (load "
          f"{result['load_1min']}): bare module {best['module']:.1f} ms, one raw target.call "
          f"{best['target']:.1f} ms")
    for name in best:
        if name.startswith("layer"):
            r = o[name]
            print(f"    {name} (objective + ledger): {best[name]:.1f} ms -> "
                  f"{r['over_target']:.3f}x the raw call (median of paired runs "
                  f"{r['over_target_median_paired']:.3f}x; target <= 1.2x), "
                  f"{r['over_module']:.3f}x the module")
    print("[2] the same batch from the ledger: " + ", ".join(
        f"{name} {o[name]['cached_us_per_request']:.0f} us/request"
        for name in best if name.startswith("layer")))
    print("[3] ledger bytes and wall time per request (model included):")
    for name in ("json", "dense", "dense_stored"):
        print(f"    {name:13s} {size[name]['bytes_per_request']:9.0f} B  "
              f"{size[name]['ms_per_request']:.3f} ms")
    print(f"    JSON / dense bytes: {size['json_over_dense_bytes']:.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (smoke run)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default="bench/out")
    args = parser.parse_args()
    result = run(args.quick, args.device)
    report(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine_dense.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'engine_dense.json'}")
    print("reproduce: python bench/engine_dense.py" + (" --quick" if args.quick else ""))


if __name__ == "__main__":
    main()
