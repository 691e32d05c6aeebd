"""The SQLite ledger: statuses, summary, secret guard, threads, and resume after a real kill -9."""

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bbzo.blackbox.protocol import Request, Response, Usage
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.ledger import Ledger
from bbzo.blackbox.targets.base import Target
from bbzo.errors import InputError, PermanentError


def gen(i: int) -> Request:
    return Request("generate", {"prompt": f"p{i}"}, {"max_tokens": 4})


def answer(latency: float, prompt_tokens: int = 2) -> Response:
    return Response({"text": "ok", "scores": (1.5, -2.0)}, usage=Usage(prompt_tokens, 3),
                    cost=0.01, latency_s=latency)


def test_statuses_answers_and_summary(tmp_path):
    ledger = Ledger(tmp_path / "run" / "ledger.sqlite")
    requests = [gen(i) for i in range(12)]
    keys = [r.key("t") for r in requests]
    ledger.begin("t", list(zip(keys, requests, strict=True)))
    assert ledger.summary().pending == 12 and ledger.answers(keys) == {}

    latencies = [0.1 * (i + 1) for i in range(10)]
    stored = ledger.record("t", [(k, r, answer(lat)) for k, r, lat
                                 in zip(keys[:10], requests[:10], latencies, strict=True)], 2)
    assert stored[0].output == {"text": "ok", "scores": [1.5, -2.0]}  # as a resume reads it
    ledger.record_error("t", [(keys[10], requests[10])], "HTTP 500 boom", 3)
    ledger.record_error("t", [(keys[0], requests[0])], "late cancel", 1)  # must not clobber ok

    found = ledger.answers(keys)
    assert set(found) == set(keys[:10])
    assert found[keys[0]].output == stored[0].output and found[keys[0]].cached
    assert found[keys[0]].cost == 0.0
    ledger.note_hits({keys[0]: 2, keys[1]: 1})

    s = ledger.summary()
    assert (s.requests, s.answered, s.errors, s.pending) == (12, 10, 1, 1)
    assert (s.cache_hits, s.attempts) == (3, 10 * 2 + 3)
    assert (s.prompt_tokens, s.completion_tokens) == (20, 30)
    assert s.cost == pytest.approx(0.10)
    assert s.latency_p50_s == pytest.approx(0.5) and s.latency_p90_s == pytest.approx(0.9)
    assert s.latency_p99_s == pytest.approx(1.0)
    assert s.kinds == {"generate": 12} and s.recent_errors == ["HTTP 500 boom"]
    assert s.to_dict()["answered"] == 10


def test_reopened_ledger_keeps_everything(tmp_path):
    path = tmp_path / "l.sqlite"
    request = gen(0)
    with Ledger(path) as ledger:
        ledger.record("t", [(request.key("t"), request, answer(0.2))], 1)
    with Ledger(path) as again:
        assert again.answers([request.key("t")])[request.key("t")].output["text"] == "ok"


def test_not_a_ledger_is_an_input_error(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_bytes(b"this is not sqlite at all, just some text " * 100)
    with pytest.raises(InputError, match="not a usable bbzo ledger"):
        Ledger(path)


def test_writes_from_many_threads(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")

    def work(t):
        for i in range(40):
            request = gen(1000 * t + i)
            ledger.record("t", [(request.key("t"), request, answer(0.01))], 1)
            ledger.answers([request.key("t")])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ledger.summary().answered == 320


class Leaky(Target):
    """Echoes secrets back in answers and in errors (as a careless API might)."""

    id = "leaky"
    capabilities = frozenset({"generate"})
    remote = True

    def __init__(self, secret: str) -> None:
        self.secret = secret

    async def acall(self, request):
        if request.payload["prompt"] == "fail":
            raise PermanentError(f"Incorrect API key provided: {self.secret}", status=401)
        return Response({"text": f"your key is {self.secret}; bearer Bearer {self.secret}"})


def test_api_keys_never_reach_the_file(tmp_path, monkeypatch):
    env_secret = "zz-live-0123456789abcdefXYZ"
    literal = "sk-proj-" + "Q7" * 20  # not in the environment: caught by its shape
    monkeypatch.setenv("MY_SERVICE_API_KEY", env_secret)
    path = tmp_path / "l.sqlite"
    ledger = Ledger(path)
    for secret in (env_secret, literal):
        layer = QueryLayer(Leaky(secret), ledger=ledger)
        out = layer.submit([Request("generate", {"prompt": f"hello {secret}"})])
        assert secret not in out[0].output["text"] and "[REDACTED]" in out[0].output["text"]
        with pytest.raises(PermanentError):
            layer.submit([Request("generate", {"prompt": "fail"})])
    assert ledger.summary().errors == 1 and ledger.redactions >= 6
    ledger.close()
    files = list(tmp_path.iterdir())
    assert path in files
    blob = b"".join(f.read_bytes() for f in files)
    assert b"[REDACTED]" in blob
    for secret in (env_secret, literal):
        assert secret.encode() not in blob


# --- resume after SIGKILL ----------------------------------------------------------------

N_KILL = 80
CHILD = """
import asyncio, sys
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.ledger import Ledger
from bbzo.blackbox.protocol import Request, Response
from bbzo.blackbox.targets.base import Target

class Slow(Target):
    id = "slow"
    capabilities = frozenset({"generate"})
    remote = True
    async def acall(self, request):
        await asyncio.sleep(0.1)
        return Response({"text": request.payload["prompt"][::-1]})

ledger_path, n, progress_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(progress_path, "w") as log:
    def progress(done, total):
        log.write(f"{done}\\n")
        log.flush()
    layer = QueryLayer(Slow(), ledger=Ledger(ledger_path), concurrency=4, progress=progress)
    layer.submit([Request("generate", {"prompt": f"p{i}"}, {"max_tokens": 4}) for i in range(n)])
"""


class Slow(Target):
    """The same target as the child's (same id, same answers), counting its calls."""

    id = "slow"
    capabilities = frozenset({"generate"})
    remote = True

    def __init__(self) -> None:
        self.calls = 0

    async def acall(self, request):
        self.calls += 1
        await asyncio.sleep(0.001)
        return Response({"text": request.payload["prompt"][::-1]})


def handed_back(progress: Path) -> int:
    lines = progress.read_text().split() if progress.exists() else []
    return int(lines[-1]) if lines else 0


def test_resume_after_kill_9_never_resends_a_completed_request(tmp_path):
    ledger_path, progress = tmp_path / "ledger.sqlite", tmp_path / "progress.txt"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ledger_path), str(N_KILL),
                              str(progress)])
    deadline = time.monotonic() + 60
    while handed_back(progress) < 12 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    done_before_kill = handed_back(progress)

    ledger = Ledger(ledger_path)
    before = ledger.summary()
    assert 12 <= done_before_kill <= before.answered < N_KILL  # handed back => committed
    assert before.pending <= 4  # at most the calls in flight (concurrency 4) were cut off

    target = Slow()
    requests = [Request("generate", {"prompt": f"p{i}"}, {"max_tokens": 4})
                for i in range(N_KILL)]
    out = QueryLayer(target, ledger=ledger, concurrency=8).submit(requests)
    assert target.calls == N_KILL - before.answered
    assert sum(r.cached for r in out) == before.answered
    assert [r.output["text"] for r in out] == [f"p{i}"[::-1] for i in range(N_KILL)]
    after = ledger.summary()
    assert (after.requests, after.answered, after.pending) == (N_KILL, N_KILL, 0)


def classify(n: int) -> Request:
    return Request("classify", {"inputs": np.full((n, 2), 0.5, np.float32)})


def probs(n: int) -> Response:
    return Response({"probs": np.full((n, 2), 0.5)})


def test_summary_counts_model_queries_of_answered_requests(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    done = [classify(3), classify(4), gen(0)]
    ledger.record("a", [(r.key("a"), r, probs(r.queries) if r.kind == "classify"
                         else answer(0.1)) for r in done], 1)
    ledger.record("b", [(classify(2).key("b"), classify(2), probs(2))], 1)
    failed, waiting = classify(5), classify(6)
    ledger.record_error("a", [(failed.key("a"), failed)], "boom", 1)
    ledger.begin("a", [(waiting.key("a"), waiting)])
    s = ledger.summary()
    assert (s.requests, s.answered, s.queries) == (6, 4, 3 + 4 + 1 + 2)
    assert {t: v["queries"] for t, v in s.targets.items()} == {"a": 8, "b": 2}
    assert s.to_dict()["queries"] == 10


V2_TABLE = ("CREATE TABLE queries (key TEXT PRIMARY KEY, target TEXT NOT NULL, kind TEXT NOT"
            " NULL, request TEXT NOT NULL, request_arrays BLOB, status TEXT NOT NULL, response"
            " TEXT, response_arrays BLOB, error TEXT, prompt_tokens INTEGER NOT NULL DEFAULT 0,"
            " completion_tokens INTEGER NOT NULL DEFAULT 0, cost REAL NOT NULL DEFAULT 0,"
            " latency_s REAL, attempts INTEGER NOT NULL DEFAULT 0, hits INTEGER NOT NULL"
            " DEFAULT 0, created_at REAL NOT NULL, updated_at REAL NOT NULL)")


def test_v2_ledger_reads_one_query_a_row_and_gains_the_column(tmp_path):
    path = tmp_path / "v2.sqlite"
    old = [gen(0), classify(3)]  # a v2 row does not know it held 3 inputs: it counts 1
    with sqlite3.connect(path) as db:
        db.execute(V2_TABLE)
        db.executemany("INSERT INTO queries (key, target, kind, request, status, response,"
                       " created_at, updated_at) VALUES (?, 't', ?, ?, 'ok', ?, 0, 0)",
                       [(r.key("t"), r.kind, r.to_json(), '{"output": {"text": "ok"},'
                         ' "meta": {}}') for r in old])
        db.execute("PRAGMA user_version=2")
    db.close()
    with Ledger(path, readonly=True) as reader:
        assert reader.summary().queries == 2 and reader.summary().targets["t"]["queries"] == 2
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2  # read-only changed nothing
        assert "queries" not in {row[1] for row in db.execute("PRAGMA table_info(queries)")}
    db.close()
    with Ledger(path) as ledger:
        assert ledger.answers([old[0].key("t")])[old[0].key("t")].output == {"text": "ok"}
        new = classify(4)
        ledger.record("t", [(new.key("t"), new, probs(4))], 1)
        assert ledger.summary().queries == 1 + 1 + 4
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
        assert sorted(db.execute("SELECT queries FROM queries")) == [(1,), (1,), (4,)]
    db.close()
