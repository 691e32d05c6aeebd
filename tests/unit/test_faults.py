"""The server's parts without HTTP: fault draws, the server-side rate limit, the model worker's
batching, and the ``bbzo serve`` command's options."""

from __future__ import annotations

import math
import threading

import pytest
from click.testing import CliRunner

from bbzo.blackbox.protocol import Request, Response
from bbzo.blackbox.serve.batcher import Batcher, Cancelled
from bbzo.blackbox.serve.faults import TIMEOUT_STATUS, FaultInjector, Faults, parse_fail
from bbzo.blackbox.targets.base import Target
from bbzo.cli import serve as serve_cli
from bbzo.errors import InputError


def test_parse_fail():
    assert parse_fail("429:0.2") == (429, 0.2)
    assert parse_fail("503:1") == (503, 1.0)
    for bad in ("429", "200:0.1", "429:1.5", "abc:0.1", "429:x"):
        with pytest.raises(InputError, match="STATUS:RATE"):
            parse_fail(bad)


@pytest.mark.parametrize("options", [
    {"fail": {429: 0.7}, "timeout_rate": 0.4},
    {"fail": {200: 0.1}},
    {"fail": {429: -0.1}},
    {"latency_s": -1.0},
    {"rpm": 0},
    {"rpm_window_s": 0},
])
def test_bad_faults_are_refused(options):
    with pytest.raises(InputError):
        Faults(**options)


def test_fault_rates_match_their_probabilities_and_are_seeded():
    faults = Faults(fail={429: 0.2, 500: 0.1}, timeout_rate=0.05, latency_s=0.1, jitter_s=0.2,
                    retry_after_s=0.5, timeout_s=9.0, seed=7)
    n = 20_000
    decisions = [FaultInjector(faults).decide(f"body {i}", 1) for i in range(n)]
    for status, p in ((429, 0.2), (500, 0.1), (TIMEOUT_STATUS, 0.05), (None, 0.65)):
        share = sum(d.status == status for d in decisions) / n
        assert share == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))  # 4 sigma
    delays = [d.delay_s for d in decisions]
    assert 0.1 <= min(delays) and max(delays) <= 0.3
    assert sum(delays) / n == pytest.approx(0.2, abs=4 * 0.2 / math.sqrt(12 * n))
    assert {d.retry_after_s for d in decisions if d.status == 429} == {0.5}
    assert {d.hang_s for d in decisions if d.status == TIMEOUT_STATUS} == {9.0}
    # Seeded per (seed, body, arrival): same draws in any order; a retry is a new draw.
    again = FaultInjector(faults)
    assert [again.decide(f"body {i}", 1) for i in reversed(range(100))] == decisions[99::-1]
    retries = [again.decide(f"body {i}", 2) for i in range(100)]
    assert retries != decisions[:100]
    other = FaultInjector(Faults(fail={429: 0.2, 500: 0.1}, timeout_rate=0.05, seed=8))
    assert [other.decide(f"body {i}", 1).status for i in range(100)] != \
        [d.status for d in decisions[:100]]


def test_server_rate_limit_answers_429_with_the_wait():
    now = [0.0]
    injector = FaultInjector(Faults(rpm=3, rpm_window_s=1.0), clock=lambda: now[0])
    assert [injector.decide(f"b{i}", 1).status for i in range(3)] == [None] * 3
    now[0] = 0.25
    refused = injector.decide("b3", 1)
    assert refused.status == 429 and refused.retry_after_s == pytest.approx(0.75)
    now[0] = 1.0  # the first admissions leave the window
    assert injector.decide("b3", 2).status is None


class Blocking(Target):
    """A local target whose first call waits for ``go``; a request with payload ``bad`` makes a
    whole call fail, as a too-long prompt does in a real model."""

    id = "blocking"
    capabilities = frozenset({"chat"})
    max_batch = 8

    def __init__(self) -> None:
        self.go = threading.Event()
        self.started = threading.Event()
        self.calls: list[int] = []

    def call(self, requests):
        self.calls.append(len(requests))
        self.started.set()
        self.go.wait(10)
        if any(r.payload.get("bad") for r in requests):
            raise InputError("bad request")
        return [Response({"text": r.payload["text"]}) for r in requests]


def test_batcher_batches_waiting_jobs_and_isolates_a_bad_one():
    target = Blocking()
    batcher = Batcher(target)
    first = batcher.submit([Request("chat", {"text": "first"})])
    target.started.wait(10)  # the worker is busy: what follows queues up
    good = batcher.submit([Request("chat", {"text": "a"}), Request("chat", {"text": "b"})])
    bad = batcher.submit([Request("chat", {"bad": True})])
    late = batcher.submit([Request("chat", {"text": "c"})])
    target.go.set()
    assert first.result(10)[0].output == {"text": "first"}
    assert [r.output["text"] for r in good.result(10)] == ["a", "b"]
    assert [r.output["text"] for r in late.result(10)] == ["c"]
    with pytest.raises(InputError):
        bad.result(10)
    batcher.close()
    # One call for the first job, one batch of the 3 queued jobs (4 requests), which failed,
    # then each job alone.
    assert target.calls == [1, 4, 2, 1, 1]
    with pytest.raises(Exception, match="shutting down"):
        batcher.submit([Request("chat", {"text": "after"})]).result(1)


class Interruptible(Blocking):
    """``Blocking`` whose calls take ``interrupt`` checks and report what they said."""

    def call(self, requests, interrupt=None):
        answers = super().call(requests)
        return [Response({**a.output, "interrupted": check()})
                for a, check in zip(answers, interrupt, strict=True)]


def test_batcher_drops_cancelled_jobs_and_interrupts_running_ones():
    target = Interruptible()
    batcher = Batcher(target)
    stop_running = threading.Event()
    first = batcher.submit([Request("chat", {"text": "first"})], stop_running)
    target.started.wait(10)
    dropped = threading.Event()
    waiting = batcher.submit([Request("chat", {"text": "gone"})], dropped)
    kept = batcher.submit([Request("chat", {"text": "kept"})])
    assert batcher.pending == 3
    dropped.set()
    stop_running.set()
    target.go.set()
    assert first.result(10)[0].output == {"text": "first", "interrupted": True}
    assert kept.result(10)[0].output == {"text": "kept", "interrupted": False}
    with pytest.raises(Cancelled):
        waiting.result(10)
    batcher.close()
    assert target.calls == [1, 1] and batcher.pending == 0


def test_serve_command_options(monkeypatch):
    seen = {}

    class Handle:
        url = "http://127.0.0.1:8000/v1"
        names = ["smollm2-135m-instruct", "hf:smollm2-135m-instruct"]

    def fake_serve(model, **options):
        seen.update(options, model=model)
        options["on_ready"](Handle())

    monkeypatch.setattr(serve_cli, "serve", fake_serve)
    runner = CliRunner()
    key = "bbzo-cli-secret-0123456789"
    result = runner.invoke(serve_cli.serve_command,
                           ["--fail", "429:0.2", "--fail", "500:0.1", "--latency", "0.2",
                            "--rpm", "60", "--port", "0", "--max-queue", "3", "--deadline",
                            "2.5"], env={"BBZO_SERVE_API_KEY": key})
    assert result.exit_code == 0, result.output
    assert (seen["max_queue"], seen["request_timeout"]) == (3, 2.5)
    assert "'smollm2-135m-instruct'" in result.output
    assert seen["host"] == "127.0.0.1" and seen["port"] == 0
    assert seen["api_key"] == key and key not in result.output
    assert seen["model"] == "hf:smollm2-135m-instruct"
    faults = seen["faults"]
    assert (faults.fail, faults.latency_s, faults.rpm) == ({429: 0.2, 500: 0.1}, 0.2, 60)
    bad = runner.invoke(serve_cli.serve_command, ["--fail", "429"])
    assert bad.exit_code == 2 and "STATUS:RATE" in bad.output
