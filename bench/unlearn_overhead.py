"""Overhead of the ECO guard: latency of a guarded generation over an unguarded one.

The guard (TF-IDF classifier, noise on the first dimension of every prompt token but the last)
sits in front of the same model; each request is a greedy chat completion of ``--tokens``
tokens, sent alone (``target.call([request])``), ``--repeats`` times, median wall time kept.
Two cases: an unflagged prompt (the classifier's cost only) and a flagged prompt (classifier +
hook). Target: ratio <= 1.1.

    python bench/unlearn_overhead.py [--quick] [--model smollm2-135m-instruct|tiny]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tiny import save_tiny_lm  # noqa: E402

from bbzo.attacks.seca.questions import load_questions  # noqa: E402
from bbzo.blackbox.protocol import Request  # noqa: E402
from bbzo.blackbox.targets.hf import HFTarget  # noqa: E402
from bbzo.unlearn.corruptions import Corruption  # noqa: E402
from bbzo.unlearn.guard import Guard, GuardedLM  # noqa: E402

TOPIC = [f"What did the novelist Zorblax Quennel write about {t}?" for t in
         ("rivers", "war", "love", "cities", "trains", "the sea", "gardens", "music", "exile",
          "childhood", "faith", "money")]


def _median_seconds(target, prompt: str, tokens: int, repeats: int) -> float:
    request = Request("chat", {"messages": [{"role": "user", "content": prompt}]},
                      {"max_tokens": tokens, "temperature": 0})
    target.call([request])  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        target.call([request])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, few repeats")
    parser.add_argument("--model", default=None)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    model = args.model or ("tiny" if args.quick else "smollm2-135m-instruct")
    repeats = 3 if args.quick else args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        lm = HFTarget(str(save_tiny_lm(Path(tmp))) if model == "tiny" else model, device="cpu")
        others = [q.question for q in load_questions(None)]
        guard = Guard(corruption=Corruption("noise_first_k", 1), strength=[1e3],
                      model_id=lm.id).fit(TOPIC, others, target_fpr=0.05)
        guarded = GuardedLM(lm, guard)
        cases = {"unflagged": others[0], "flagged": "What did Zorblax Quennel write about snow?"}
        assert not guard.flags([cases["unflagged"]])[0] and guard.flags([cases["flagged"]])[0]
        figures = {"model": lm.id, "tokens": args.tokens, "repeats": repeats}
        for case, prompt in cases.items():
            plain = _median_seconds(lm, prompt, args.tokens, repeats)
            with_guard = _median_seconds(guarded, prompt, args.tokens, repeats)
            figures[case] = {"unguarded_s": plain, "guarded_s": with_guard,
                             "ratio": with_guard / plain}
        start = time.perf_counter()
        for _ in range(100):
            guard.flags([cases["unflagged"]])
        figures["classifier_ms"] = (time.perf_counter() - start) * 10
    print(json.dumps(figures, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
