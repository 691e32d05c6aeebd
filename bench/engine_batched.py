"""Per-row batched estimation vs one estimate at a time, on the small CNN of ``bench/engine.py``.

B = 64 images each get their own RGE estimate (q directions, central differences): once as ONE
``bbzo.estimate_gradient(fun, X)`` call with X of shape (B, 784) (one batch of B·2q points), and
once as B separate ``estimate_gradient(fun, X[b])`` calls (B batches of 2q points). Same queries;
the figure is the wall-time ratio, with the mean cosine of the estimates to the true (autograd)
gradient on both sides to show they are the same estimates in quality. The black box runs the
model on at most ``MAX_BATCH`` rows at a time, as a classifier target with that ``max_batch``
does (on a CPU one forward of all 2,048 rows is slower than cache-sized ones).

    python bench/engine_batched.py [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import bbzo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import attack_loss, small_cnn, timed  # noqa: E402  (bench/engine.py, unchanged)

ROWS = 64
LABEL = 3
MAX_BATCH = 256


def in_batches(fun, size: int):
    """``fun`` evaluated on at most ``size`` rows at a time (what a target's max_batch does)."""
    return lambda X: torch.cat([fun(X[i:i + size]) for i in range(0, len(X), size)])


def true_gradients(model: torch.nn.Module, X: torch.Tensor) -> torch.Tensor:
    """Autograd gradient of the attack loss at each row of X (B, 784)."""
    Xg = X.clone().requires_grad_(True)
    logits = model(Xg.reshape(-1, 1, 28, 28))
    target = torch.full((len(X),), LABEL, device=X.device)
    torch.nn.functional.cross_entropy(logits, target, reduction="sum").backward()
    return Xg.grad


def run(quick: bool, device: str | None = None) -> dict:
    """Measure batched vs separate per-row estimation; returns the figures as a dict."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    q, repeat = (4, 1) if quick else (16, 5)
    torch.manual_seed(0)
    model = small_cnn().to(device).eval()
    fun = in_batches(attack_loss(model, LABEL), MAX_BATCH)
    X = torch.rand(ROWS, 784, device=device)
    est = bbzo.blackbox.zo.RGE(q=q, mu=1e-3)

    def batched():
        return bbzo.estimate_gradient(fun, X, estimator=est, seed=0)

    def separate():
        rows = [bbzo.estimate_gradient(fun, X[b], estimator=est, seed=b) for b in range(ROWS)]
        return torch.stack([g for g, _ in rows]), sum(n for _, n in rows)

    (g_batched, n_batched), (g_separate, n_separate) = batched(), separate()  # warm up
    t_batched, t_separate = timed(batched, repeat), timed(separate, repeat)
    truth = true_gradients(model, X)

    def mean_cos(g: torch.Tensor) -> float:
        return float(torch.nn.functional.cosine_similarity(g, truth, dim=1).mean())

    return {"device": device, "rows": ROWS, "q": q, "queries": n_batched,
            "queries_separate": n_separate, "batched_s": t_batched, "separate_s": t_separate,
            "batched_qps": n_batched / t_batched, "separate_qps": n_separate / t_separate,
            "ratio": t_separate / t_batched, "cos_batched": mean_cos(g_batched),
            "cos_separate": mean_cos(g_separate)}


def report(r: dict) -> None:
    """Print ``run``'s figures in one line."""
    print(f"per-row estimates of {r['rows']} images, q={r['q']} ({r['queries']} queries): one "
          f"batched call {r['batched_s']:.3f} s vs {r['rows']} calls {r['separate_s']:.3f} s -> "
          f"{r['ratio']:.1f}x; mean cosine to autograd {r['cos_batched']:.3f} vs "
          f"{r['cos_separate']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small q, one repeat (smoke run)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    r = run(args.quick, args.device)
    report(r)
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
