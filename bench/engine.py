"""Engine benchmark: every figure is a ratio measured side by side in this one run.

1. batched vs one-at-a-time evaluation of the same perturbed points (queries/s ratio), small CNN;
2. the engine's overhead over the raw batched forward passes for the same evaluations;
3. peak memory of a seeded ZO step vs inference vs a first-order Adam step, small transformer
   built from a config (each measured in a fresh subprocess);
4. RGE cosine to the true gradient vs q, against the theoretical √(q/(q+d));
5. per-row batched estimation of B images in one call vs B separate calls (``engine_batched``);
6. dense ``classify`` requests through the query layer and ledger vs raw batched target calls,
   and ledger bytes per request, JSON vs dense (``engine_dense``);
7. incremental vs full fitness of one-row children in the population search
   (``engine_population``);
8. a seeded step's noise vs its forwards on a SmolLM2-shaped model (``engine_seeded``).

    python bench/engine.py [--quick] [--device cpu|cuda] [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import bbzo
from bbzo.blackbox.zo import RGE


def small_cnn() -> nn.Module:
    """A LeNet-sized classifier for 1×28×28 inputs (the black box of an input-space attack)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def attack_loss(model: nn.Module, label: int):
    """Batched objective over flattened images X (n, 784): cross-entropy to ``label``."""
    @torch.no_grad()
    def fun(X: torch.Tensor) -> torch.Tensor:
        logits = model(X.reshape(-1, 1, 28, 28))
        return nn.functional.cross_entropy(logits, torch.full((len(X),), label,
                                           device=X.device), reduction="none")
    return fun


def one_at_a_time(fun):
    return lambda X: torch.cat([fun(X[i:i + 1]) for i in range(len(X))])


def timed(fn, repeat: int) -> float:
    """Best-of-``repeat`` wall time of ``fn()`` in seconds (synchronising CUDA)."""
    best = float("inf")
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def bench_batching(device: str, steps: int, q: int) -> dict:
    torch.manual_seed(0)
    model = small_cnn().to(device).eval()
    fun = attack_loss(model, 3)
    x0 = torch.rand(784, device=device)

    def run(f):
        return bbzo.minimize(f, x0, q=q, lr=1e-2, maxiter=steps, seed=0)

    t_batched = timed(lambda: run(fun), 3)
    t_single = timed(lambda: run(one_at_a_time(fun)), 1)
    queries = steps * 2 * q
    return {"queries": queries, "batched_qps": queries / t_batched,
            "sequential_qps": queries / t_single, "ratio": t_single / t_batched}


def bench_overhead(device: str, steps: int, q: int) -> dict:
    """Engine time vs the same number of raw forward passes on batches of the same shape."""
    torch.manual_seed(0)
    model = small_cnn().to(device).eval()
    fun = attack_loss(model, 3)
    x0 = torch.rand(784, device=device)
    batches = [torch.rand(2 * q, 784, device=device) for _ in range(steps)]

    def raw():
        for X in batches:
            fun(X)

    def engine():
        bbzo.minimize(fun, x0, q=q, lr=1e-2, maxiter=steps, seed=0)

    raw(), engine()  # warm up
    t_raw = t_engine = float("inf")
    for _ in range(7):  # interleaved, so a busy moment hurts both sides alike
        t_raw, t_engine = min(t_raw, timed(raw, 1)), min(t_engine, timed(engine, 1))
    return {"steps": steps, "raw_s": t_raw, "engine_s": t_engine, "ratio": t_engine / t_raw,
            "overhead_ms_per_step": 1e3 * (t_engine - t_raw) / steps}


MEMORY_CHILD = r"""
import gc, json, sys, torch
from transformers import GPT2Config, GPT2LMHeadModel
mode, device = sys.argv[1], sys.argv[2]

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS", "VmHWM")):
            yield line.split()[0][:-1], int(line.split()[1]) / 1024

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

from bbzo.blackbox.zo.seeded import zo_step
torch.manual_seed(0)
cfg = GPT2Config(vocab_size=8192, n_embd=512, n_layer=6, n_head=8, n_positions=256)
gc.collect()
base = dict(rss_mb())["VmRSS"] if device == "cpu" else 0.0
model = GPT2LMHeadModel(cfg).to(device)
ids = torch.randint(0, cfg.vocab_size, (8, 128), device=device)

def loss():
    return model(ids, labels=ids).loss

if mode == "adam":
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
gc.collect()
if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
else:
    reset_peak()
for _ in range(2):
    if mode == "inference":
        with torch.no_grad():
            loss()
    elif mode == "zo":
        model.eval()
        zo_step(model, lambda: loss(), mu=1e-3, lr=1e-6, q=1, rng=0)
    else:
        opt.zero_grad()
        loss().backward()
        opt.step()
if device == "cuda":
    peak = torch.cuda.max_memory_allocated() / 2**20
else:
    peak = dict(rss_mb())["VmHWM"] - base
params = sum(p.numel() for p in model.parameters())
print(json.dumps({"mode": mode, "peak_mb": peak, "params": params}))
"""


# Make RSS track live memory: one thread, one malloc arena, and every large block mmapped (and
# so returned at free) instead of glibc's moving mmap threshold that keeps freed blocks.
CHILD_ENV = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1",
             "MALLOC_MMAP_THRESHOLD_": "65536"}


def bench_memory(device: str) -> dict:
    out = {}
    for mode in ("inference", "zo", "adam"):
        proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, mode, device],
                              capture_output=True, text=True, check=True,
                              env={**os.environ, **CHILD_ENV})
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    inf = out["inference"]["peak_mb"]
    return {"params": out["inference"]["params"],
            "peak_mb": {m: round(v["peak_mb"], 1) for m, v in out.items()},
            "zo_over_inference": out["zo"]["peak_mb"] / inf,
            "adam_over_inference": out["adam"]["peak_mb"] / inf,
            "adam_over_zo": out["adam"]["peak_mb"] / out["zo"]["peak_mb"]}


def bench_cosine(d: int, qs: list[int], trials: int) -> list[dict]:
    gen = torch.Generator().manual_seed(987_654_321)  # not one of the estimators' seeds
    lam = 1 + 9 * torch.rand(d, generator=gen, dtype=torch.float64)
    x = torch.randn(d, generator=gen, dtype=torch.float64)
    grad = lam * x

    def fun(X):
        return 0.5 * (X ** 2 * lam).sum(1)

    rows = []
    for q in qs:
        cos = []
        for seed in range(trials):
            g, _ = bbzo.estimate_gradient(fun, x, estimator=RGE(q=q), seed=seed)
            cos.append(float(torch.nn.functional.cosine_similarity(g, grad, dim=0)))
        rows.append({"q": q, "rms_cos": math.sqrt(float(np.mean(np.square(cos)))),
                     "theory": math.sqrt(q / (q + d))})
    return rows


def plot_cosine(rows: list[dict], d: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    qs = [r["q"] for r in rows]
    ax.loglog(qs, [r["theory"] for r in rows], "k--", label="√(q/(q+d))")
    ax.loglog(qs, [r["rms_cos"] for r in rows], "o", label="RGE, measured")
    ax.set(xlabel="directions q", ylabel="RMS cosine to ∇f", title=f"RGE on a quadratic, d={d}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps/trials (smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="bench/out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = 5 if args.quick else 30
    d = 1000 if args.quick else 10_000
    trials = 20 if args.quick else 100
    qs = [1, 4, 16, 64] if args.quick else [1, 2, 4, 8, 16, 32, 64, 128, 256]

    result = {"device": args.device, "torch": torch.__version__, "threads":
              torch.get_num_threads()}
    result["batching"] = bench_batching(args.device, steps, q=32)
    b = result["batching"]
    print(f"[1] batched vs one-at-a-time, small CNN, 64 points per step: "
          f"{b['batched_qps']:.0f} vs {b['sequential_qps']:.0f} queries/s -> "
          f"{b['ratio']:.1f}x")
    result["overhead"] = bench_overhead(args.device, steps, q=32)
    o = result["overhead"]
    print(f"[2] engine vs raw batched forwards, {o['steps']} steps: {o['engine_s']:.3f} s vs "
          f"{o['raw_s']:.3f} s -> {o['ratio']:.3f}x ({o['overhead_ms_per_step']:.2f} ms/step; "
          f"target <= 1.1x)")
    result["memory"] = bench_memory(args.device)
    m = result["memory"]
    print(f"[3] peak memory, GPT-2 from config ({m['params'] / 1e6:.1f}M params, batch 8x128): "
          f"inference {m['peak_mb']['inference']:.0f} MB, seeded ZO {m['peak_mb']['zo']:.0f} "
          f"MB, Adam {m['peak_mb']['adam']:.0f} MB -> ZO/inference "
          f"{m['zo_over_inference']:.2f}x (target <= 1.2x), Adam/ZO {m['adam_over_zo']:.1f}x")
    result["cosine"] = bench_cosine(d, qs, trials)
    print(f"[4] RGE RMS cosine vs q on a quadratic, d={d}, {trials} seeds:")
    for r in result["cosine"]:
        print(f"    q={r['q']:4d}  measured {r['rms_cos']:.4f}  theory {r['theory']:.4f}  "
              f"ratio {r['rms_cos'] / r['theory']:.3f}")
    plot_cosine(result["cosine"], d, out / "rge_cosine_vs_q.png")
    # Parts [5]-[8] live in their own scripts (each also runs alone); they import this file's
    # helpers, so they are imported here, not at the top.
    import engine_batched
    import engine_dense
    import engine_population
    import engine_seeded

    parts = (engine_batched, engine_dense, engine_population, engine_seeded)
    for number, part in enumerate(parts, 5):
        print(f"[{number}] {part.__name__}:")
        result[part.__name__] = part.run(args.quick)
        part.report(result[part.__name__])
    (out / "engine.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'engine.json'} and {out / 'rge_cosine_vs_q.png'}")
    print("reproduce: python bench/engine.py" + (" --quick" if args.quick else ""))


if __name__ == "__main__":
    main()
