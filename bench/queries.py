"""Query-path benchmark: every figure is a ratio measured side by side in this one run.

1. Throughput of ``OpenAITarget`` + ``QueryLayer`` against ``bbzo serve`` running in a separate
   process. The served model is the tiny random GPT-2 of ``tests/tiny.py`` answering one-token
   completions, so the model is not the bottleneck; the server adds latency L (fault
   injection), the client runs C requests at once under a request limit R per minute (its own
   ``RateLimiter``, enforced as R·w/60 requests per window of w seconds, a short window so a
   run of seconds reaches steady state). Every request goes through a ledger. Reported: the
   steady request rate seen at the server (after the opening burst of min(C, R·w/60)
   requests) over min(C/L, R/60); the ideal makespan over the measured one (the ideal counts
   the opening burst); CPU milliseconds per request in the client and the server processes.
2. Cache-hit latency: the same requests answered again from the ledger, per request, for one
   submit of all of them and for one submit per request.
3. Local scoring on an ``HFTarget`` (``letter_logprobs`` through the query layer): batches of
   16 vs one request at a time (ratio of wall times).

    python bench/queries.py [--quick] [--hf-model smollm2-135m-instruct|tiny] [--out bench/out]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tiny import save_tiny_lm  # noqa: E402

from bbzo.blackbox.protocol import Request  # noqa: E402
from bbzo.blackbox.query.layer import QueryLayer  # noqa: E402
from bbzo.blackbox.query.ledger import Ledger  # noqa: E402
from bbzo.blackbox.query.limits import RateLimiter, RateLimits  # noqa: E402
from bbzo.blackbox.targets import models  # noqa: E402
from bbzo.blackbox.targets.hf import HFTarget  # noqa: E402
from bbzo.blackbox.targets.openai_api import OpenAITarget  # noqa: E402

# The server process: serve the folder with the given latency, print the URL, stop on stdin EOF.
SERVER = """
import sys, threading
from bbzo.blackbox.serve import Faults, serve
folder, latency = sys.argv[1], float(sys.argv[2])
def ready(handle):
    print(handle.url, flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), handle.close()), daemon=True).start()
serve("hf:" + folder, port=0, model_name="tiny", faults=Faults(latency_s=latency),
      on_ready=ready, device="cpu")
"""


class Server:
    """``bbzo serve`` of ``folder`` in a child process (its own interpreter, so its threads do
    not share the client's GIL)."""

    def __init__(self, folder: Path, latency_s: float) -> None:
        # One intra-op thread: on a tiny model more threads only spin and steal the client's CPU.
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, str(folder), str(latency_s)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        self.url = self.proc.stdout.readline().strip()
        if not self.url:
            raise RuntimeError("the server process did not start")

    def stats(self) -> dict:
        return httpx.get(self.url.removesuffix("/v1") + "/bbzo/stats", timeout=30).json()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def chats(n: int, tag: str) -> list[Request]:
    return [Request("chat", {"messages": [{"role": "user", "content": f"{tag} {i}"}]},
                    {"max_tokens": 1}) for i in range(n)]


def ideal_makespan(n: int, latency: float, concurrency: int, per_window: int | None,
                   window: float) -> float:
    """Least possible wall time for ``n`` requests: concurrency waves of ``latency``, and the
    limiter's ``per_window`` admissions per window (the first window at t = 0)."""
    waves = math.ceil(n / concurrency) * latency
    if per_window is None:
        return waves
    return max(waves, (math.ceil(n / per_window) - 1) * window + latency)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def steady_rate(arrivals: list[float], burst: int) -> float:
    """Requests/s at the server after the opening burst: (n - burst) / (last - first arrival).
    With groups of ``burst`` requests every T seconds this is exactly burst / T."""
    arrivals = sorted(arrivals)
    return (len(arrivals) - burst) / (arrivals[-1] - arrivals[0])


def bench_throughput(folder: Path, settings: list[tuple], ledger_dir: Path) -> list[dict]:
    rows = []
    for latency, concurrency, rpm, window, n in settings:
        server = Server(folder, latency)
        target = OpenAITarget("tiny", base_url=server.url, api_key="unused", timeout_s=30)
        per_window = None if rpm is None else max(1, int(rpm * window / 60))
        limits = RateLimiter(RateLimits(rpm=per_window), window_s=window)
        QueryLayer(target).submit(chats(concurrency, "warm-up"))  # connections, first forwards
        seen = len(server.stats()["completions"])
        with Ledger(ledger_dir / f"L{latency}-C{concurrency}-R{rpm}.sqlite") as ledger:
            layer = QueryLayer(target, ledger=ledger, limits=limits, concurrency=concurrency)
            client_cpu, server_cpu = time.process_time(), cpu_seconds(server.proc.pid)
            start = time.perf_counter()
            layer.submit(chats(n, f"L{latency} C{concurrency} R{rpm}"))
            wall = time.perf_counter() - start
            client_cpu = time.process_time() - client_cpu
            server_cpu = cpu_seconds(server.proc.pid) - server_cpu
        stats = server.stats()
        target.close()
        server.close()
        bound = min(concurrency / latency, rpm / 60 if rpm else math.inf)
        burst = concurrency if per_window is None else per_window  # the first window's arrivals
        achieved = steady_rate([a["t"] for a in stats["completions"][seen:]], burst)
        ideal = ideal_makespan(n, latency, concurrency, per_window, window)
        rows.append({"latency_s": latency, "concurrency": concurrency, "rpm": rpm,
                     "window_s": window, "requests": n, "wall_s": wall,
                     "steady_rps": achieved, "bound_rps": bound,
                     "steady_over_bound": achieved / bound, "ideal_wall_s": ideal,
                     "ideal_over_wall": ideal / wall,
                     "client_cpu_ms_per_request": client_cpu / n * 1e3,
                     "server_cpu_ms_per_request": server_cpu / n * 1e3,
                     "server_peak_inflight": stats["peak_inflight"]})
    return rows


def bench_cache(folder: Path, ledger_dir: Path, n: int) -> dict:
    server = Server(folder, 0.0)
    target = OpenAITarget("tiny", base_url=server.url, api_key="unused")
    requests = chats(n, "cache")
    with Ledger(ledger_dir / "cache.sqlite") as ledger:
        QueryLayer(target, ledger=ledger, concurrency=8).submit(requests)
        sent = len(server.stats()["completions"])
        layer = QueryLayer(target, ledger=ledger)
        start = time.perf_counter()
        hits = layer.submit(requests)
        batch_s = time.perf_counter() - start
        start = time.perf_counter()
        for request in requests:
            layer.submit([request])
        single_s = time.perf_counter() - start
    contacted = len(server.stats()["completions"]) - sent
    target.close()
    server.close()
    assert all(r.cached for r in hits) and contacted == 0, "cache hits reached the server"
    return {"requests": n, "per_request_batched_us": batch_s / n * 1e6,
            "per_request_one_per_submit_us": single_s / n * 1e6}


def bench_local(model: str, n: int, batch: int) -> dict:
    target = HFTarget(model, device="cpu", max_batch=batch)
    requests = [Request("letter_logprobs",
                        {"prompt": f"Question {i}: which option is right, A, B, C or D?\nAnswer:",
                         "letters": ["A", "B", "C", "D"]}) for i in range(n)]
    QueryLayer(target).submit(requests[:batch])  # warm-up
    start = time.perf_counter()
    batched = QueryLayer(target).submit(requests)
    batched_s = time.perf_counter() - start
    target.max_batch = 1
    start = time.perf_counter()
    single = QueryLayer(target).submit(requests)
    single_s = time.perf_counter() - start
    worst = max(abs(a.output["logprobs"][x] - b.output["logprobs"][x])
                for a, b in zip(batched, single, strict=True) for x in "ABCD")
    return {"model": target.id, "requests": n, "batch": batch, "batched_s": batched_s,
            "single_s": single_s, "speedup": single_s / batched_s,
            "max_abs_logprob_diff": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument("--hf-model", default=models.DEFAULT_LM,
                        help="alias or folder for part 3, or 'tiny' [default: %(default)s]")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    scale = 0.25 if args.quick else 1.0
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_tiny_lm(Path(tmp) / "tiny")
        settings = [(latency, c, rpm, window, max(c, int(n * scale)))
                    for latency, c, rpm, window, n in [(0.25, 8, None, 1.0, 240),
                                                       (0.25, 32, None, 1.0, 640),
                                                       (0.05, 8, None, 1.0, 400),
                                                       (0.1, 16, 3000, 1.0, 300),
                                                       (0.5, 16, 600, 2.0, 100)]]
        throughput = bench_throughput(folder, settings, Path(tmp))
        cache = bench_cache(folder, Path(tmp), int(400 * scale))
        hf_model = str(folder) if args.hf_model == "tiny" else args.hf_model
        local = bench_local(hf_model, int(64 * scale) or 16, 16)
    command = "python bench/queries.py" + (" --quick" if args.quick else "") \
        + (f" --hf-model {args.hf_model}" if args.hf_model != models.DEFAULT_LM else "")
    print("[1] throughput vs bbzo serve (tiny GPT-2, 1-token completions, server in its own "
          "process)")
    for r in throughput:
        rpm = f"R={r['rpm']}/min (window {r['window_s']:g} s)" if r["rpm"] else "R=none"
        print(f"    L={r['latency_s']:g} s C={r['concurrency']} {rpm}, {r['requests']} req: "
              f"{r['steady_rps']:.1f} req/s at the server vs min(C/L, R/60) = "
              f"{r['bound_rps']:.1f} -> ratio {r['steady_over_bound']:.2f}; ideal/measured "
              f"makespan {r['ideal_over_wall']:.2f}; CPU per request: client "
              f"{r['client_cpu_ms_per_request']:.1f} ms, server "
              f"{r['server_cpu_ms_per_request']:.1f} ms")
    print(f"[2] ledger cache hits, {cache['requests']} requests: "
          f"{cache['per_request_batched_us']:.0f} us/request in one submit, "
          f"{cache['per_request_one_per_submit_us']:.0f} us/request one per submit "
          f"(0 server hits)")
    print(f"[3] local letter_logprobs on {local['model']}, {local['requests']} requests: batches "
          f"of {local['batch']} {local['batched_s']:.2f} s vs one at a time "
          f"{local['single_s']:.2f} s -> {local['speedup']:.1f}x "
          f"(max |logprob diff| {local['max_abs_logprob_diff']:.1e})")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"throughput": throughput, "cache": cache, "local_batching": local,
              "command": command, "cpus": os.cpu_count(), "load_average": os.getloadavg()}
    (args.out / "queries.json").write_text(json.dumps(result, indent=2))
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"wrote {args.out / 'queries.json'}")
    print(f"reproduce: {command}")


if __name__ == "__main__":
    main()
