"""Seeded-ZO noise cost: seconds making noise vs seconds of forwards for one q = 1 step.

A SmolLM2-135M-shaped Llama built from a config (hidden 576, 30 layers, 9 heads, 3 kv heads,
intermediate 1536, vocab 49152, tied embeddings; ``--quick``: a much smaller one), batch 4×64
tokens, CPU, 1 and 2 threads. For each thread count, interleaved and best of ``repeat``, in
wall seconds (and CPU seconds of the process, steadier on a shared machine):

- ``forwards_s``: the step's two forwards (plain ``model(ids, labels=ids)`` under no_grad);
- ``step_s``: a whole ``zo_step`` (q = 1), so ``step_s − forwards_s`` is the engine's cost;
- ``noise_s``: the library's generator making the noise such a step makes: two perturbed reads
  of every tensor (a tied one once) and the update's pass;
- ``old_noise_s``: the former counter-hash generator (kept here only, as the reference) making
  what the former step made: every read of every tensor (a tied one at each read) + update.

    python bench/engine_seeded.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bbzo.blackbox.zo.noise import seeded_normal
from bbzo.blackbox.zo.seeded import SeededPerturbation, zo_step

# --- the former generator (bbzo.seeded-zo/1), reference only -----------------------------
_OLD_CHUNK = 1 << 20
_M32 = 0xFFFFFFFF
_C1, _C2, _GOLDEN = 0x21F0AAAD, 0x735A2D97, 0x9E3779B9


def _mix(x):
    x = x ^ (x >> 16)
    x = (x * _C1) & _M32
    x = x ^ (x >> 15)
    x = (x * _C2) & _M32
    return x ^ (x >> 15)


def _fold(*words: int) -> int:
    h = _GOLDEN
    for w in words:
        h = _mix(h ^ w)
    return h


def old_normal(seed: int, index: int, numel: int) -> None:
    """Make (and drop) the former generator's float32 noise of one tensor, chunk by chunk:
    a 32-bit integer hash of (seed, tensor, pair counter) turned into N(0, 1) by Box–Muller."""
    stream = _fold(seed & _M32, seed >> 32, index & _M32, index >> 32)
    for start in range(0, numel, _OLD_CHUNK):
        n = min(_OLD_CHUNK, numel - start)
        pair0 = start // 2
        k1, k2, k3 = (_fold(stream, pair0 >> 32, i) for i in (1, 2, 3))
        j = torch.arange(pair0 & _M32, (pair0 & _M32) + (n + 1) // 2, dtype=torch.int64)
        a = _mix(_mix(j ^ k1) ^ k2)
        b = _mix(a ^ k3)
        low = a < (1 << 31)
        small = torch.where(low, a + 1, _M32 - a).to(torch.float32) * 2.0 ** -32
        radius = torch.sqrt(-2.0 * torch.where(low, torch.log(small), torch.log1p(-small)))
        angle = b.to(torch.float32) * (2.0 * math.pi * 2.0 ** -32)
        torch.stack([torch.cos(angle) * radius, torch.sin(angle) * radius], 1)


# --- the benchmark -----------------------------------------------------------------------

def smollm2_config(quick: bool) -> LlamaConfig:
    sizes = (dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=160, vocab_size=4096) if quick else
             dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, intermediate_size=1536, vocab_size=49152))
    return LlamaConfig(**sizes, tie_word_embeddings=True, max_position_embeddings=2048,
                       bos_token_id=0, eos_token_id=0, pad_token_id=0)


def read_slots(model: torch.nn.Module, pert: SeededPerturbation) -> list[tuple[int, int]]:
    """(index, numel) of every parameter slot a forward reads (a tied tensor at each slot)."""
    index = {id(p): i for i, _, p in pert.entries}
    return [(index[id(p)], p.numel()) for m in model.modules()
            for p in m._parameters.values() if p is not None and id(p) in index]


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn()``; on a shared machine the CPU
    seconds at one thread are the steadier figure."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def run(quick: bool) -> dict:
    """Measure at 1 and 2 threads; returns the config, element counts and per-thread rows."""
    config = smollm2_config(quick)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0))
    pert = SeededPerturbation(model)
    tensors = [(i, p.numel()) for i, _, p in pert.entries]
    slots = read_slots(model, pert)
    new_count = 3 * sum(n for _, n in tensors)
    old_count = 2 * sum(n for _, n in slots) + sum(n for _, n in tensors)

    def forwards():
        with torch.no_grad():
            for _ in range(2):
                model(ids, labels=ids)

    def step():
        zo_step(pert, lambda: model(ids, labels=ids).loss, lr=1e-9, rng=0)

    def noise():
        for _ in range(3):
            for i, n in tensors:
                seeded_normal(1, i, n)

    def old_noise():
        for i, n in slots + slots + tensors:
            old_normal(1, i, n)

    repeat = 3 if quick else 2
    threads_before = torch.get_num_threads()
    rows = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            forwards()                                          # warm up
            keys = ("forwards_s", "step_s", "noise_s", "old_noise_s")
            wall, cpu = dict.fromkeys(keys, math.inf), dict.fromkeys(keys, math.inf)
            for r in range(repeat):                             # interleaved, best of repeat
                for key, fn in zip(keys, (forwards, step, noise, old_noise), strict=True):
                    if key == "old_noise_s" and r and not quick:    # ~40 s a time: once
                        continue
                    w, c = timed(fn)
                    wall[key], cpu[key] = min(wall[key], w), min(cpu[key], c)
            f, fc = wall["forwards_s"], cpu["forwards_s"]
            rows.append({"threads": threads, **wall,
                         "cpu_s": cpu,
                         "noise_per_forwards": wall["noise_s"] / f,
                         "old_noise_per_forwards": wall["old_noise_s"] / f,
                         "step_overhead_per_forwards": (wall["step_s"] - f) / f,
                         "cpu_noise_per_forwards": cpu["noise_s"] / fc,
                         "cpu_old_noise_per_forwards": cpu["old_noise_s"] / fc,
                         "new_mnormals_per_s": new_count / wall["noise_s"] / 1e6,
                         "old_mnormals_per_s": old_count / wall["old_noise_s"] / 1e6})
    finally:
        torch.set_num_threads(threads_before)
    return {"quick": quick, "parameters": sum(n for _, n in tensors),
            "normals_per_step": {"new": new_count, "old": old_count}, "rows": rows}


def report(result: dict) -> None:
    """Print ``run``'s figures, one line per thread count."""
    for r in result["rows"]:
        print(f"{r['threads']} thread(s): forwards {r['forwards_s']:.3f} s; noise/forwards "
              f"before {r['old_noise_per_forwards']:.2f} ({r['old_mnormals_per_s']:.0f} M/s), "
              f"after {r['noise_per_forwards']:.2f} ({r['new_mnormals_per_s']:.0f} M/s); "
              f"whole step over forwards +{r['step_overhead_per_forwards']:.2f}; in CPU "
              f"seconds noise/forwards before {r['cpu_old_noise_per_forwards']:.2f}, after "
              f"{r['cpu_noise_per_forwards']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small Llama instead of 135M")
    result = run(parser.parse_args().quick)
    print(json.dumps(result, indent=1))
    report(result)


if __name__ == "__main__":
    main()
