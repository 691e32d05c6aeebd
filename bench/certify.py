"""Certification benchmark: bbzo's certify against a straightforward loop (and IBM ART when it
is installed), side by side in one run on the same classifier and images.

For each method: noise samples classified per second, seconds per image, CPU microseconds per
sample (all threads; what a loaded machine does not distort much), peak resident memory
(each method runs in a fresh subprocess, so ``ru_maxrss`` is its own), and the FLOP rate of
its forwards as a fraction of this machine's fp32 GEMM rate (measured in the same run).

- ``bbzo``: ``SmoothedClassifier.certify`` through the query layer (one dense request per noise
  block, ledger on disk) on a local ``TorchClassifier`` tuned as ``certify_run`` tunes it;
- ``http``: the same through ``HTTPClassifier`` against ``bbzo serve-classifier`` running in
  its own process on 127.0.0.1 (sharing the cores), with the ratio of its throughput to the
  server's own classification rate (CPU and RSS: the client's);
- ``loop``: Cohen's code's shape: batches of 1,000 repeated images + ``randn_like`` noise under
  ``no_grad``, counts by argmax;
- ``bbzo-ts``: ``bbzo`` with the tuned forward's TorchScript backend instead of ONNX Runtime;
- ``tuned``: the best plain-torch loop one writes by hand (the recipe an outside measurement
  used): channels-last, a frozen trace optimised for inference, batches of 128, noise drawn
  into a reused buffer; no query layer, no ledger, no budget;
- ``onnx-loop``: the same loop with the model exported to ONNX and run by an ONNX Runtime
  session (ORT's own intra-op threads), what one writes by hand with ORT;
- ``art``: ``PyTorchRandomizedSmoothing.certify`` (``adversarial-robustness-toolbox``, optional)
  at its default batch size (32) and at 256 and ours; "best" is the fastest of them.

Memory flat in n: run once more with ``--n 100000 --images 1`` and compare the peak RSS.

``--repeat R`` runs every method R times, round-robin (bbzo, loop, ..., then again), so that a
shared machine's drift hits every method alike: each method's row is its median round, and
each ratio is the median of the R same-round ratios (their range is printed too).

    python bench/certify.py [--quick] [--n 10000] [--images 3] [--repeat 1]
                            [--methods bbzo loop ...] [--out bench/out]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bbzo.defenses.models import small_cnn

WIDTH = 24  # small_cnn(width=24): about 4.4 MFLOP per 1×28×28 image
TUNED_LOOP_BATCH = 128  # the tuned loop's batch: 64-256 all ran at 17-22k samples/s here


def flops_per_image(model: nn.Module, shape: tuple[int, ...]) -> float:
    """Multiply-adds × 2 of the model's conv and linear layers for one input."""
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels
            total += 2 * k * output[0].numel() // module.groups
        elif isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return float(total)


def gemm_rate(size: int = 1024, reps: int = 5) -> float:
    """fp32 matrix-multiply FLOP/s of this machine (best of ``reps``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def clock() -> tuple[float, float]:
    """(wall, CPU of all this process's threads) seconds, for ``elapsed``."""
    return time.perf_counter(), time.process_time()


def elapsed(since: tuple[float, float]) -> dict:
    """Wall and CPU seconds since ``clock()`` (CPU time counts the work, not the waits of a
    loaded machine)."""
    wall, cpu = clock()
    return {"seconds": wall - since[0], "cpu_seconds": cpu - since[1]}


def model_and_images(images: int) -> tuple[nn.Module, np.ndarray]:
    torch.manual_seed(0)
    model = small_cnn(1, 28, 10, WIDTH).eval()
    x = np.random.default_rng(0).random((images, 1, 28, 28), dtype=np.float32)
    return model, x


def run_bbzo(n: int, images: int, batch: int, backend: str = "auto") -> dict:
    from bbzo.blackbox.query.layer import QueryLayer
    from bbzo.blackbox.query.ledger import Ledger
    from bbzo.blackbox.targets.classifier import TorchClassifier
    from bbzo.defenses.smoothing import SmoothedClassifier, SmoothingSettings

    model, x = model_and_images(images)
    target = TorchClassifier(model, "bench", outputs="logits", device="cpu", max_batch=batch,
                             tune=True, backend=backend)
    setup = time.perf_counter()
    target.predict(x[:1])  # traces and checks the tuned graph once per process
    setup = time.perf_counter() - setup
    with tempfile.TemporaryDirectory() as tmp, Ledger(Path(tmp) / "ledger.sqlite") as ledger:
        smoothed = SmoothedClassifier(QueryLayer(target, ledger=ledger),
                                      SmoothingSettings(n0=100, n=n, batch=batch))
        start = clock()
        for i in range(images):
            smoothed.certify(x[i], i)
        return {**elapsed(start), "setup_seconds": setup,
                "backend": target.runner.ran}


def run_bbzo_torchscript(n: int, images: int, batch: int) -> dict:
    """``run_bbzo`` with the tuned forward's TorchScript backend (no ONNX Runtime)."""
    return run_bbzo(n, images, batch, backend="torchscript")


def run_http(n: int, images: int, batch: int) -> dict:
    """bbzo's certify of the same classifier behind ``bbzo serve-classifier`` in its own process
    on 127.0.0.1, as a black box is served; also the server's own classification rate (inputs
    per second of model time, from its ``/stats``). CPU and peak RSS are the client's."""
    from bbzo.blackbox.query.layer import QueryLayer
    from bbzo.blackbox.targets.classifier import HTTPClassifier, save_classifier
    from bbzo.defenses.smoothing import SmoothedClassifier, SmoothingSettings

    model, x = model_and_images(images)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_classifier(model, Path(tmp) / "classifier", "bbzo.defenses.models:small_cnn",
                                 {"width": WIDTH}, outputs="logits")
        server = subprocess.Popen([sys.executable, "-c", "from bbzo.cli.main import cli; cli()",
                                   "serve-classifier", str(folder), "--port", "0"],
                                  stderr=subprocess.PIPE, text=True)
        try:
            started = server.stderr.readline()  # "serving ... at URL; Ctrl-C stops"
            url = re.search(r"http://\S+/classify", started)
            if url is None:
                raise RuntimeError(f"bbzo serve-classifier did not start: {started.strip()}")
            remote = HTTPClassifier(url.group(0), max_batch=batch, timeout=120)
            remote.predict(x[:1])  # the server traces its tuned graph before timing
            before = server_stats(url.group(0))
            smoothed = SmoothedClassifier(QueryLayer(remote),
                                          SmoothingSettings(n0=100, n=n, batch=batch))
            start = clock()
            for i in range(images):
                smoothed.certify(x[i], i)
            took = elapsed(start)
            after = server_stats(url.group(0))
        finally:
            server.terminate()
            server.wait(30)
    return {**took, "server_samples_per_s": (after["inputs"] - before["inputs"])
            / (after["model_seconds"] - before["model_seconds"])}


def server_stats(url: str) -> dict:
    """``GET /stats`` of the classifier server whose classify endpoint is ``url``."""
    with urllib.request.urlopen(url.replace("/classify", "/stats"), timeout=30) as reply:
        return json.loads(reply.read())


def run_loop(n: int, images: int, batch: int) -> dict:
    model, x = model_and_images(images)
    start = clock()
    with torch.no_grad():
        for i in range(images):
            for num in (100, n):
                counts = np.zeros(10, dtype=np.int64)
                left = num
                while left > 0:
                    size = min(batch, left)
                    rep = torch.from_numpy(x[i]).repeat(size, 1, 1, 1)
                    noisy = rep + torch.randn_like(rep) * 0.25
                    counts += np.bincount(model(noisy).argmax(1).numpy(), minlength=10)
                    left -= size
    return elapsed(start)


def run_tuned_loop(n: int, images: int, batch: int) -> dict:
    """The best plain-torch loop one writes by hand (the recipe measured outside the team):
    channels-last, a frozen trace optimised for inference (oneDNN), cache-sized batches of
    ``batch`` (the last one padded), noise drawn into a reused buffer, torch's own threads."""
    model, x = model_and_images(images)
    model = model.to(memory_format=torch.channels_last)
    buffer = torch.empty(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    setup = time.perf_counter()
    with torch.no_grad():
        graph = torch.jit.optimize_for_inference(torch.jit.trace(model, buffer.normal_()))
        graph(buffer), graph(buffer)  # the first runs of a TorchScript graph specialise it
    setup = time.perf_counter() - setup
    start = clock()
    with torch.no_grad():
        hand_loop(lambda inputs: graph(inputs).numpy(), buffer, x, n)
    return {**elapsed(start), "setup_seconds": setup}


def hand_loop(forward: Callable[[torch.Tensor], np.ndarray], buffer: torch.Tensor,
              x: np.ndarray, n: int) -> None:
    """The hand-written loops' certify: per image, 100 then ``n`` noisy copies drawn into
    ``buffer`` (batch, 1, 28, 28) batch by batch, counted by the argmax of ``forward``'s
    logits (the last batch's padding rows dropped)."""
    batch = len(buffer)
    for i in range(len(x)):
        image = torch.from_numpy(x[i])
        for num in (100, n):
            counts = np.zeros(10, dtype=np.int64)
            for lo in range(0, num, batch):
                torch.randn(buffer.shape, out=buffer).mul_(0.25).add_(image)
                top = forward(buffer).argmax(1)[:min(batch, num - lo)]
                counts += np.bincount(top, minlength=10)


def run_onnx_loop(n: int, images: int, batch: int) -> dict:
    """The tuned loop with ONNX Runtime in place of torch's forward: the model exported once,
    one session with ORT's own intra-op threads (as many as torch's), batches of ``batch``,
    noise drawn into a reused buffer."""
    import onnxruntime

    model, x = model_and_images(images)
    buffer = torch.empty(batch, 1, 28, 28)
    setup = time.perf_counter()
    exported = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, (buffer.normal_(),), exported, dynamo=False,
                          input_names=["x"])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(exported.getvalue(), options,
                                           providers=["CPUExecutionProvider"])
    session.run(None, {"x": buffer.numpy()})
    setup = time.perf_counter() - setup
    start = clock()
    hand_loop(lambda inputs: session.run(None, {"x": inputs.numpy()})[0], buffer, x, n)
    return {**elapsed(start), "setup_seconds": setup}


def run_art(n: int, images: int, batch: int) -> dict:
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    model, x = model_and_images(images)
    art = PyTorchRandomizedSmoothing(model=model, loss=nn.CrossEntropyLoss(),
                                     input_shape=(1, 28, 28), nb_classes=10, sample_size=n,
                                     scale=0.25, alpha=0.001, device_type="cpu")
    start = clock()
    art.certify(x, n=n, batch_size=batch)
    return elapsed(start)


RUNNERS = {"bbzo": run_bbzo, "bbzo-ts": run_bbzo_torchscript, "http": run_http,
           "loop": run_loop, "tuned": run_tuned_loop, "onnx-loop": run_onnx_loop, "art": run_art}


def child(method: str, n: int, images: int, batch: int) -> None:
    """Run one method and print its JSON result (peak RSS included) on stdout."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = RUNNERS[method](n, images, batch)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["rss_before_mb"] = before / 1024
    print(json.dumps(result))


def measure(method: str, n: int, images: int, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--n", str(n), "--images", str(images),
           "--batch", str(batch)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    samples = images * (100 + n)
    result.update({"samples_per_s": samples / result["seconds"],
                   "cpu_us_per_sample": 1e6 * result["cpu_seconds"] / samples,
                   "seconds_per_image": result["seconds"] / images, "batch": batch})
    return result


def ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def span(values: list[float]) -> str:
    """`(range a-b)` of several rounds' ratios; empty for one."""
    return f"(range {min(values):.2f}-{max(values):.2f})" if len(values) > 1 else ""


RATIOS = ("bbzo_vs_loop", "bbzo_vs_tuned_loop", "bbzo_vs_onnx_loop", "bbzo_vs_art_best",
          "http_vs_server")


def median(values: list[float | None]) -> float | None:
    values = sorted(v for v in values if v is not None)
    return float(np.median(values)) if values else None


def median_round(runs: list[dict]) -> dict:
    """The run of median samples/s among one method's rounds (a failed run if all failed)."""
    ok = sorted((r for r in runs if "samples_per_s" in r), key=lambda r: r["samples_per_s"])
    return ok[(len(ok) - 1) // 2] if ok else runs[0]


def same_round_ratios(results: dict) -> dict:
    """bbzo / loop, bbzo / tuned loop, bbzo / ONNX loop, bbzo / best ART and HTTP / its
    server's rate within one round."""
    def rate(name: str) -> float | None:
        return results.get(name, {}).get("samples_per_s")

    bbzo, loop, tuned, onnx = rate("bbzo"), rate("loop"), rate("tuned loop"), rate("onnx loop")
    art = max((r.get("samples_per_s", 0) for k, r in results.items() if k.startswith("art")),
              default=0) or None
    http = results.get("bbzo over HTTP", {})
    return {"bbzo_vs_loop": bbzo / loop if bbzo and loop else None,
            "bbzo_vs_tuned_loop": bbzo / tuned if bbzo and tuned else None,
            "bbzo_vs_onnx_loop": bbzo / onnx if bbzo and onnx else None,
            "bbzo_vs_art_best": bbzo / art if bbzo and art else None,
            "http_vs_server": http["samples_per_s"] / http["server_samples_per_s"]
            if "server_samples_per_s" in http else None}


def table(results: dict) -> str:
    """The side-by-side markdown table of ``results`` (name → measure's result)."""
    lines = ["| method | samples/s | s/image | CPU µs/sample | share of GEMM | peak RSS |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:80]} | | | | |")
            continue
        rate = f"{r['samples_per_s']:,.0f}"
        if "server_samples_per_s" in r:
            rate += (f" ({r['samples_per_s'] / r['server_samples_per_s']:.2f} of the server's "
                     f"own {r['server_samples_per_s']:,.0f})")
        if name == "bbzo" and r.get("backend"):
            name += f" ({r['backend']} forward)"
        lines.append(f"| {name} | {rate} | {r['seconds_per_image']:.3f} | "
                     f"{r['cpu_us_per_sample']:,.0f} | "
                     f"{100 * r['gemm_fraction']:.1f} % | {r['peak_rss_mb']:,.0f} MB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="n = 1,000 on 2 images")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of every method, round-robin (module doc)")
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("--methods", nargs="+", choices=sorted(RUNNERS), default=list(RUNNERS),
                        help="which methods to run (default: all; art only when installed)")
    parser.add_argument("--child", choices=sorted(RUNNERS), default=None)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n, args.images, args.batch)
        return
    n, images = (1000, 2) if args.quick else (args.n, args.images)
    model, _ = model_and_images(1)
    flops = flops_per_image(model, (1, 28, 28))
    try:
        import art  # noqa: F401
        have_art = True
    except ImportError:
        have_art = False
    names = {"bbzo": "bbzo", "bbzo-ts": "bbzo (torchscript forward)", "http": "bbzo over HTTP",
             "loop": "loop", "tuned": "tuned loop", "onnx-loop": "onnx loop"}
    batches = {"loop": 1000, "tuned": TUNED_LOOP_BATCH, "onnx-loop": TUNED_LOOP_BATCH}
    plan = [(names[m], m, batches.get(m, args.batch)) for m in names if m in args.methods]
    if have_art and "art" in args.methods:
        plan += [(f"art (batch {b})", "art", b) for b in sorted({32, 256, args.batch})]
    rounds, gemms = [], []
    for _ in range(args.repeat):
        gemms.append(gemm_rate())  # each round's own, as the machine drifts
        rounds.append({name: measure(method, n, images, batch) for name, method, batch in plan})
        for r in rounds[-1].values():
            if "samples_per_s" in r:
                r["gemm_fraction"] = r["samples_per_s"] * flops / gemms[-1]
    gemm = float(np.median(gemms))
    results = {name: median_round([r[name] for r in rounds]) for name, _, _ in plan}
    ratios = [same_round_ratios(r) for r in rounds]
    report = {"n": n, "images": images, "repeat": args.repeat, "flops_per_image": flops,
              "gemm_flops_per_s": gemm, "threads": torch.get_num_threads(),
              "load_average": os.getloadavg(),
              "art": "measured" if have_art else "not installed (pip install "
                     "adversarial-robustness-toolbox statsmodels)", "results": results,
              **{key: median([r[key] for r in ratios]) for key in RATIOS},
              "rounds": [{"gemm_flops_per_s": g,
                          "samples_per_s": {k: v.get("samples_per_s") for k, v in r.items()},
                          **ratio_set}
                         for g, r, ratio_set in zip(gemms, rounds, ratios, strict=True)]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "certify.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    spread = {key: [r[key] for r in ratios if r[key] is not None] for key in RATIOS}
    print(f"\nn = {n}, {images} image(s), {args.repeat} round(s), {flops / 1e6:.2f} "
          f"MFLOP/image, fp32 GEMM {gemm / 1e9:.0f} GFLOP/s (median of rounds), "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}; "
          f"bbzo / loop = {ratio(report['bbzo_vs_loop'])} "
          f"{span(spread['bbzo_vs_loop'])}, bbzo / tuned loop = "
          f"{ratio(report['bbzo_vs_tuned_loop'])} {span(spread['bbzo_vs_tuned_loop'])}, "
          f"bbzo / ONNX loop = "
          f"{ratio(report['bbzo_vs_onnx_loop'])} {span(spread['bbzo_vs_onnx_loop'])}, "
          f"bbzo / best ART = "
          f"{ratio(report['bbzo_vs_art_best'])} {span(spread['bbzo_vs_art_best'])}\n")
    print(table(results))


if __name__ == "__main__":
    main()
