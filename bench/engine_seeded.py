"""Seeded-ZO noise cost: seconds making noise vs seconds of forwards for one q = 1 step.

A SmolLM2-135M-shaped Llama built from a config (hidden 576, 30 layers, 9 heads, 3 kv heads,
intermediate 1536, vocab 49152, tied embeddings; ``--quick``: a much smaller one), batch 4×64
tokens, CPU, 1 and 2 threads. Three noise sources side by side: ``hash`` (the former counter
hash, kept here only as the reference), ``generator`` (per-chunk torch generators, the
default) and ``table`` (slices of a shared ``NoiseTable``, 2**25 entries; 2**22 with
``--quick``). For each thread count, interleaved and best of ``repeat``, in wall seconds (and
CPU seconds of the process, steadier on a shared machine):

- ``forwards_s``: the step's two forwards (plain ``model(ids, labels=ids)`` under no_grad);
- ``step_s/<source>``: a whole ``zo_step`` (q = 1) with that source, so ``step_s − forwards_s``
  is the engine's cost (noise, θ + μz reads, update);
- ``noise_s/<source>``: making the noise such a step makes, three times per tensor (two
  perturbed reads, a tied tensor once, and the update's pass): ``generator`` fills new tensors;
  ``table`` takes the views the step reads (a hash and a slice per chunk); ``table_copy``
  copies those views into new tensors (an upper bound: the step never does); ``hash`` makes
  what the former step made (every read of every tensor, a tied one at each read, + update).
- ``table_build_s``: making the table once per process (not per step).

    python bench/engine_seeded.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bbzo.blackbox.zo.noise import CHUNK, NoiseTable, seeded_normal
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


def table_views(table: NoiseTable, tensors: list[tuple[int, int]]) -> None:
    """Take the views of the table a q = 1 step reads: every chunk of every tensor, 3 times."""
    for _ in range(3):
        for i, n in tensors:
            for c, start in enumerate(range(0, n, CHUNK)):
                table.chunk(1, i, c, min(CHUNK, n - start), "cpu")


def run(quick: bool) -> dict:
    """Measure at 1 and 2 threads; returns the config, element counts and per-thread rows."""
    config = smollm2_config(quick)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0))
    table = NoiseTable(size=1 << 22 if quick else 1 << 25)
    build_s = timed(table.values)
    perts = {"generator": SeededPerturbation(model), "table": SeededPerturbation(model,
                                                                                 noise=table)}
    tensors = [(i, p.numel()) for i, _, p in perts["generator"].entries]
    slots = read_slots(model, perts["generator"])
    count = {"generator": 3 * sum(n for _, n in tensors),
             "hash": 2 * sum(n for _, n in slots) + sum(n for _, n in tensors)}

    def forwards():
        with torch.no_grad():
            for _ in range(2):
                model(ids, labels=ids)

    def step(source):
        return lambda: zo_step(perts[source], lambda: model(ids, labels=ids).loss, lr=1e-9,
                               rng=0)

    def noise(source):
        def make():
            for _ in range(3):
                for i, n in tensors:
                    seeded_normal(1, i, n, noise=source)
        return make

    def old_noise():
        for i, n in slots + slots + tensors:
            old_normal(1, i, n)

    timings = {"forwards_s": forwards, "step_s/generator": step("generator"),
               "step_s/table": step("table"), "noise_s/hash": old_noise,
               "noise_s/generator": noise("generator"), "noise_s/table": lambda: table_views(
                   table, tensors), "noise_s/table_copy": noise(table)}
    repeat = 3 if quick else 2
    threads_before = torch.get_num_threads()
    rows = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            forwards()                                          # warm up
            wall, cpu = dict.fromkeys(timings, math.inf), dict.fromkeys(timings, math.inf)
            for r in range(repeat):                             # interleaved, best of repeat
                for key, fn in timings.items():
                    if key == "noise_s/hash" and r and not quick:    # ~40 s a time: once
                        continue
                    w, c = timed(fn)
                    wall[key], cpu[key] = min(wall[key], w), min(cpu[key], c)
            rows.append({"threads": threads, "wall_s": wall, "cpu_s": cpu,
                         **{f"{kind}_per_forwards": {
                             key.split("/")[1]: t[key] / t["forwards_s"] for key in t
                             if key.startswith("noise_s/")}
                            for kind, t in (("noise", wall), ("cpu_noise", cpu))},
                         "step_overhead_per_forwards": {
                             source: (wall[f"step_s/{source}"] - wall["forwards_s"])
                             / wall["forwards_s"] for source in perts},
                         "mnormals_per_s": {source: count[source] / wall[f"noise_s/{source}"]
                                            / 1e6 for source in count}})
    finally:
        torch.set_num_threads(threads_before)
    return {"quick": quick, "parameters": sum(n for _, n in tensors),
            "normals_per_step": count, "table": table.config, "table_build_s": build_s[0],
            "rows": rows}


def report(result: dict) -> None:
    """Print ``run``'s figures, one line per thread count."""
    print(f"table of {result['table']['size']:,} normals made once in "
          f"{result['table_build_s']:.2f} s")
    for r in result["rows"]:
        n, c, o = r["noise_per_forwards"], r["cpu_noise_per_forwards"], \
            r["step_overhead_per_forwards"]
        print(f"{r['threads']} thread(s): forwards {r['wall_s']['forwards_s']:.3f} s; "
              f"noise/forwards hash {n['hash']:.2f}, generator {n['generator']:.2f}, table "
              f"{n['table']:.4f} (copied out {n['table_copy']:.2f}); whole step over forwards "
              f"+{o['generator']:.2f} generator, +{o['table']:.2f} table; in CPU seconds "
              f"noise/forwards hash {c['hash']:.2f}, generator {c['generator']:.2f}, "
              f"table {c['table']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small Llama instead of 135M")
    result = run(parser.parse_args().quick)
    print(json.dumps(result, indent=1))
    report(result)


if __name__ == "__main__":
    main()
