"""SECA benchmark: scoring one search step's candidates in one query-layer submit vs one submit
per candidate, measured side by side in this one run.

For each of the first ``--questions`` built-in questions, the proposer (the same model, as in
``bbzo attack seca``) writes the N·M rewrites of one search step from the original (not timed).
The objective then scores them twice through a ``QueryLayer`` without a ledger, so nothing is
answered from a cache: once as SECA does (all N·M texts in ONE submit; the local model batches
them, ``max_batch`` 16 as in ``SecaConfig.local_batch``) and once with one submit per text.
Reported per objective (``option``: 4 option log-likelihoods per text; ``letter``: the letter
distribution after the paper's prompt): wall seconds of each (best of ``--repeat``), their
ratio, and the largest difference between the two ways' log-probabilities (float rounding of
padded batches).

    python bench/seca.py [--threads 1] [--questions 3] [--repeat 3] [--model tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from seca_support import save_roomy_lm  # noqa: E402

from bbzo.attacks.seca.objective import make_objective  # noqa: E402
from bbzo.attacks.seca.proposer import LLMProposer  # noqa: E402
from bbzo.attacks.seca.questions import load_questions  # noqa: E402
from bbzo.blackbox.query.layer import QueryLayer  # noqa: E402
from bbzo.blackbox.targets import models  # noqa: E402
from bbzo.blackbox.targets.hf import HFTarget  # noqa: E402

LOCAL_BATCH = 16


def best_time(fn, repeat: int) -> tuple[float, object]:
    """Best-of-``repeat`` wall seconds of ``fn()`` and its last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def bench(model: str, n_questions: int, parents: int, candidates: int,
          repeat: int) -> dict:
    target = HFTarget(model, device="cpu", max_batch=LOCAL_BATCH)
    proposer = LLMProposer(QueryLayer(target), seed=0, fmt="completion", max_tokens=32)
    steps = []
    for q in load_questions(None, seed=0, limit=n_questions):
        texts = [t for t in dict.fromkeys(proposer.propose(q, [q.question] * parents,
                                                           candidates, 0)) if t]
        steps.append((q, texts))
    out = {"model": target.id, "questions": n_questions, "parents": parents,
           "candidates": candidates, "texts": sum(len(t) for _, t in steps), "objectives": {}}
    for name in ("option", "letter"):
        objective = make_objective(name, QueryLayer(target))  # no ledger: nothing cached

        def batched(obj=objective):
            return [obj.evaluate(q, texts) for q, texts in steps]

        def one_by_one(obj=objective):
            return [np.concatenate([obj.evaluate(q, [t]) for t in texts]) for q, texts in steps]

        batched_s, a = best_time(batched, repeat)
        single_s, b = best_time(one_by_one, repeat)
        out["objectives"][name] = {
            "batched_s": batched_s, "single_s": single_s, "speedup": single_s / batched_s,
            "max_abs_logp_diff": float(max(np.abs(x - y).max() for x, y in zip(a, b,
                                                                             strict=True)))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=models.DEFAULT_LM,
                        help="alias or folder of a causal LM, or 'tiny' [default: %(default)s]")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--questions", type=int, default=3, help="built-in questions")
    parser.add_argument("--parents", type=int, default=3, help="N")
    parser.add_argument("--candidates", type=int, default=3, help="M")
    parser.add_argument("--repeat", type=int, default=3, help="timings per way (best kept)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = str(save_roomy_lm(Path(tmp) / "tiny")) if args.model == "tiny" else args.model
        result = bench(model, args.questions, args.parents, args.candidates, args.repeat)
    command = (f"python bench/seca.py --threads {args.threads} --questions {args.questions} "
               f"--parents {args.parents} --candidates {args.candidates} --repeat "
               f"{args.repeat}" + (f" --model {args.model}"
                                   if args.model != models.DEFAULT_LM else ""))
    result.update({"threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                   "load_average": os.getloadavg(), "command": command})
    print(f"SECA candidate scoring on {result['model']}, CPU, {result['threads']} torch "
          f"thread(s): {result['texts']} rewrites of {args.questions} questions "
          f"(N={args.parents} x M={args.candidates} per step), best of {args.repeat}")
    for name, r in result["objectives"].items():
        print(f"    {name:6s} objective: one submit per step {r['batched_s']:.2f} s vs one per "
              f"candidate {r['single_s']:.2f} s -> {r['speedup']:.1f}x "
              f"(max |logp diff| {r['max_abs_logp_diff']:.1e})")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "seca.json").write_text(json.dumps(result, indent=2))
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"wrote {args.out / 'seca.json'}")
    print(f"reproduce: {command}")


if __name__ == "__main__":
    main()
