"""``bbzo serve`` + ``OpenAITarget`` end to end: a tiny model served on 127.0.0.1 and queried with
the real ``openai`` client through the query layer, checked from the server's own counts."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import torch
from tiny import tiny_lm, tiny_tokenizer

from bbzo.blackbox.protocol import Request
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.ledger import Ledger
from bbzo.blackbox.query.limits import RateLimiter, RateLimits, token_estimate
from bbzo.blackbox.query.retry import RetryPolicy
from bbzo.blackbox.serve import Faults, serve, start_server
from bbzo.blackbox.targets.hf import HFTarget
from bbzo.blackbox.targets.openai_api import OpenAITarget
from bbzo.errors import InputError, PermanentError, TransientError

NAME = "tiny"
LETTERS = ["A", "B", "C", "D"]
QUESTION = [{"role": "user", "content": "Question: Which option is right? A B C D\nAnswer:"}]
FAST = RetryPolicy(base_delay_s=0.01, max_delay_s=0.05, max_attempts=12)
REPO = Path(__file__).resolve().parents[2]


def boosted_lm(folder: Path, forms: list[str], logit: float) -> Path:
    """The tiny random LM, edited so that ``forms`` (one-token strings) get a logit of about
    ``logit`` (± about logit/5) at every position while other tokens stay near 0: a bias
    along a unit vector v in the final layer norm, and v added to those tokens' (tied) rows."""
    tok = tiny_tokenizer()
    model = tiny_lm(tok, seed=0)
    v = torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(1))
    v /= v.norm()
    with torch.no_grad():
        model.transformer.ln_f.bias.copy_(5.0 * v)
        for form in forms:
            ids = tok.encode(form, add_special_tokens=False)
            assert len(ids) == 1, form
            model.transformer.wte.weight[ids[0]] += logit / 5.0 * v
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def letters_dir(tmp_path_factory) -> Path:
    """Letters A-D (both spellings) near logit 5: all in the top 20, so covered."""
    forms = [f for x in LETTERS for f in (x, " " + x)]
    return boosted_lm(tmp_path_factory.mktemp("letters"), forms, 5.0)


@pytest.fixture(scope="module")
def served_letters(letters_dir) -> HFTarget:
    return HFTarget(str(letters_dir), device="cpu")


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> HFTarget:
    """End-of-text near logit 8: greedy completions stop at once (1 completion token)."""
    return HFTarget(str(boosted_lm(tmp_path_factory.mktemp("quick"), ["<|endoftext|>"], 8.0)),
                    device="cpu")


def client(server, **options) -> OpenAITarget:
    options.setdefault("api_key", "unused")
    return OpenAITarget(NAME, base_url=server.url, **options)


def chats(n: int, tag: str = "q", **params) -> list[Request]:
    params.setdefault("max_tokens", 1)
    return [Request("chat", {"messages": [{"role": "user", "content": f"{tag} {i}"}]}, params)
            for i in range(n)]


def answered(stats: dict) -> dict[str, int]:
    return {k: b["answered"] for k, b in stats["bodies"].items() if b["answered"]}


def settled(server, timeout_s: float = 10.0) -> dict:
    """Stats once no chat completion is still in progress at the server."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = server.stats()
        if all(a["status"] is not None for a in stats["completions"]) \
                or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


def busiest(times: list[float], weights: list[float], width: float) -> float:
    """Largest total weight of arrivals in any half-open window [t, t + width)."""
    return max(sum(w for s, w in zip(times, weights, strict=True) if t <= s < t + width)
               for t in times)


# ---- equality with the local model -------------------------------------------------------

def test_letter_logprobs_equal_local_model(served_letters, letters_dir):
    local = HFTarget(str(letters_dir), device="cpu")
    letters = [*LETTERS, "Z"]  # "Z" is not boosted: outside the top 20
    with start_server(served_letters, model_name=NAME) as server:
        target = client(server)
        got = QueryLayer(target).submit(
            [Request("letter_logprobs", {"messages": QUESTION, "letters": letters})])[0]
        target.close()
    want = local.call([Request("letter_logprobs", {"messages": QUESTION, "letters": letters})])[0]
    for x in LETTERS:
        assert got.output["coverage"][x] is True
        assert got.output["logprobs"][x] == pytest.approx(want.output["logprobs"][x], abs=1e-4)
    floor = got.meta["floor"]
    assert got.output["coverage"]["Z"] is False and got.output["logprobs"]["Z"] == floor
    assert want.output["logprobs"]["Z"] <= floor + 1e-4  # the floor bounds a missing letter
    assert got.usage.prompt_tokens == want.usage.prompt_tokens
    assert got.usage.completion_tokens == 1


def test_chat_logprobs_equal_local_model(served_letters, letters_dir):
    local = HFTarget(str(letters_dir), device="cpu")
    params = {"max_tokens": 5, "temperature": 0, "logprobs": True, "top_logprobs": 5}
    with start_server(served_letters, model_name=NAME) as server:
        target = client(server)
        got = QueryLayer(target).submit([Request("chat", {"messages": QUESTION}, params)])[0]
        target.close()
    want = local.call([Request("chat", {"messages": QUESTION}, params)])[0]
    assert got.output["text"] == want.output["text"]
    assert len(got.output["logprobs"]) == len(want.output["logprobs"]) == 5
    for g, w in zip(got.output["logprobs"], want.output["logprobs"], strict=True):
        assert g["token"] == w["token"]
        assert g["logprob"] == pytest.approx(w["logprob"], abs=1e-4)
        assert list(g["top"]) == list(w["top"])
        assert list(g["top"].values()) == pytest.approx(list(w["top"].values()), abs=1e-4)
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == \
        (want.usage.prompt_tokens, want.usage.completion_tokens)


def test_stop_served_equals_local(served_letters, letters_dir):
    local = HFTarget(str(letters_dir), device="cpu")
    params = {"max_tokens": 12, "seed": 7, "logprobs": True, "top_logprobs": 2}
    free = local.call([Request("chat", {"messages": QUESTION}, params)])[0].output["text"]
    middle = len(free) // 2
    request = Request("chat", {"messages": QUESTION}, {**params, "stop": [free[middle:middle + 2]]})
    want = local.call([request])[0]
    with start_server(served_letters, model_name=NAME) as server:
        target = client(server)
        got = QueryLayer(target).submit([request])[0]
        with pytest.raises(InputError, match="stop"):
            QueryLayer(target).submit([Request("chat", {"messages": QUESTION},
                                               {**params, "stop": ["A"] * 5})])
        target.close()
        stats = server.stats()
    assert want.output["finish_reason"] == "stop" and len(want.output["text"]) < middle + 1
    assert (got.output["text"], got.output["finish_reason"]) == \
        (want.output["text"], want.output["finish_reason"])
    assert [t["token"] for t in got.output["logprobs"]] == \
        [t["token"] for t in want.output["logprobs"]]
    assert got.usage == want.usage
    assert len(stats["completions"]) == 1  # the bad stop never left the client


def test_without_logprobs_a_flagged_sampling_estimate(served_letters, letters_dir):
    n = 512  # four requests of 128 choices
    with start_server(served_letters, model_name=NAME, logprobs=False) as server:
        target = client(server, fallback_samples=n)
        layer = QueryLayer(target)
        first, = layer.submit(
            [Request("letter_logprobs", {"messages": QUESTION, "letters": LETTERS})])
        second, = layer.submit(
            [Request("letter_logprobs", {"messages": QUESTION, "letters": ["A", "B"]})])
        target.close()
        stats = server.stats()
    want = HFTarget(str(letters_dir), device="cpu").call(
        [Request("letter_logprobs", {"messages": QUESTION, "letters": LETTERS})])[0]
    assert first.meta["objective"] == "sampling-estimate" and first.meta["samples"] == n
    # Tolerance: 4 binomial standard errors plus the +1/2 smoothing's largest shift.
    for x in LETTERS:
        p = math.exp(want.output["logprobs"][x])
        tol = 4 * math.sqrt(p * (1 - p) / n) + 0.5 * (len(LETTERS) + 2) / n
        assert math.exp(first.output["logprobs"][x]) == pytest.approx(p, abs=tol)
    # One logprobs call then 4 sampling calls; the second request goes straight to sampling.
    assert len(stats["completions"]) == 1 + 4 + 4
    assert second.meta["objective"] == "sampling-estimate"


# ---- concurrency, faults, resume --------------------------------------------------------

def test_concurrent_requests_all_answered_once(quick):
    with start_server(quick, model_name=NAME, faults=Faults(latency_s=0.1)) as server:
        target = client(server)
        responses = QueryLayer(target, concurrency=8).submit(chats(32))
        target.close()
        stats = server.stats()
    assert len(responses) == 32 and all(r.output["finish_reason"] for r in responses)
    assert sorted(answered(stats).values()) == [1] * 32
    # Concurrency measured at the server, not by wall time (a timing bound fails on a loaded
    # machine): at least 4 of the 8 allowed requests were in flight at once.
    assert 4 <= stats["peak_inflight"] <= 8


def test_injected_429_500_and_timeouts_survived_without_loss_or_duplicates(quick, tmp_path):
    faults = Faults(fail={429: 0.2, 500: 0.15}, timeout_rate=0.1, timeout_s=1.5,
                    retry_after_s=0.05, seed=3)
    requests = chats(30)
    with start_server(quick, model_name=NAME, faults=faults) as server:
        target = client(server, timeout_s=1.0)
        with Ledger(tmp_path / "ledger.sqlite") as ledger:
            layer = QueryLayer(target, ledger=ledger, retry=FAST, concurrency=8)
            responses = layer.submit(requests)
            summary = ledger.summary()
        target.close()
        stats = settled(server)
    assert len(responses) == 30
    assert sorted(answered(stats).values()) == [1] * 30
    assert len(stats["bodies"]) == 30
    codes = stats["by_status"]
    assert min(codes.get("429", 0), codes.get("500", 0), codes.get("504", 0)) >= 1, codes
    assert (summary.answered, summary.errors, summary.pending) == (30, 0, 0)
    assert layer.stats.rate_limited == codes["429"]
    # Retry-After is honoured: a body's next arrival comes at least 0.05 s after its 429.
    by_key: dict[str, list[dict]] = {}
    for a in stats["completions"]:
        by_key.setdefault(a["key"], []).append(a)
    gaps = [later["t"] - a["t"] for arrivals in by_key.values()
            for a, later in itertools.pairwise(arrivals) if a["status"] == 429]
    assert gaps and min(gaps) >= 0.05


JOB = textwrap.dedent("""
    import sys
    from bbzo.blackbox.query.layer import QueryLayer
    from bbzo.blackbox.query.ledger import Ledger
    from bbzo.blackbox.protocol import Request
    from bbzo.blackbox.targets.openai_api import OpenAITarget

    url, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    target = OpenAITarget("tiny", base_url=url)
    requests = [Request("chat", {"messages": [{"role": "user", "content": f"job {i}"}]},
                        {"max_tokens": 1}) for i in range(n)]
    with Ledger(path) as ledger:
        QueryLayer(target, ledger=ledger, concurrency=4).submit(requests)
    target.close()
""")


def wait_for(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def ledger_ok(path: Path) -> int:
    """Answers committed to the ledger (-1 while it cannot be read: not created yet, busy)."""
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT COUNT(*) FROM queries WHERE status = 'ok'").fetchone()[0]
    except sqlite3.OperationalError:
        return -1
    finally:
        db.close()


def quiet(stats: dict, ledger: Path) -> bool:
    """Requests are held at the door, none is in progress past it, and every answer sent is
    in the ledger: a kill now leaves only unanswered requests in flight."""
    return stats["inflight"] == stats["held"] >= 1 and ledger_ok(ledger) == len(answered(stats))


def test_sigkill_then_resume_sends_no_request_twice(quick, tmp_path):
    n = 40
    script, path = tmp_path / "job.py", tmp_path / "ledger.sqlite"
    script.write_text(JOB)
    env = {**os.environ, "OPENAI_API_KEY": "unused", "PYTHONPATH": str(REPO)}
    with start_server(quick, model_name=NAME, faults=Faults(latency_s=0.05)) as server:
        command = [sys.executable, str(script), server.url, str(path), str(n)]
        job = subprocess.Popen(command, env=env)
        wait_for(lambda: len(answered(server.stats())) >= 8)
        # Freeze the job mid-run: new requests wait at the server's door; once the answers
        # already sent are committed to the ledger, kill -9 the job with 4 requests in flight.
        server.hold()
        wait_for(lambda: quiet(server.stats(), path), timeout_s=20)
        job.send_signal(signal.SIGKILL)
        job.wait()
        before = answered(server.stats())
        server.release()
        subprocess.run(command, env=env, check=True, timeout=120)
        stats = settled(server)
    assert 8 <= len(before) < n
    assert sorted(answered(stats).values()) == [1] * n
    assert all(stats["bodies"][k]["received"] == 1 for k in before)  # never sent again
    assert sum(a["status"] == "abandoned" for a in stats["completions"]) >= 1
    with Ledger(path) as ledger:
        summary = ledger.summary()
    assert (summary.answered, summary.pending) == (n, 0)


# ---- rate and token limits, measured at the server ---------------------------------------

@pytest.mark.parametrize("limit", ["rpm", "tpm"])
def test_rate_limits_never_exceeded_at_the_server(quick, limit):
    window, slack = 1.0, 0.3
    requests = chats(9, tag=limit, max_tokens=40, temperature=0)
    estimate = max(token_estimate(r) for r in requests)
    limits = RateLimits(rpm=3) if limit == "rpm" else RateLimits(tpm=3 * estimate)
    with start_server(quick, model_name=NAME) as server:
        target = client(server)
        start = time.perf_counter()
        QueryLayer(target, limits=RateLimiter(limits, window_s=window),
                   concurrency=8).submit(requests)
        elapsed = time.perf_counter() - start
        limited = server.stats()["completions"]
        QueryLayer(target, concurrency=8).submit(chats(9, tag="free", max_tokens=40,
                                                       temperature=0))
        free = server.stats()["completions"][len(limited):]
        target.close()
    # The limiter's guarantee assumes its token estimate bounds the true count: check that.
    assert all(a["tokens"] <= estimate for a in limited)
    # Arrivals trail admissions by under `slack` seconds, so any server window of
    # window - slack seconds holds only requests admitted within one limiter window.
    times = [a["t"] for a in limited]
    count = [1.0] * len(times) if limit == "rpm" else [a["tokens"] for a in limited]
    cap = 3 if limit == "rpm" else 3 * estimate
    assert busiest(times, count, window - slack) <= cap
    assert elapsed >= window * (0.9 if limit == "tpm" else 1.9)
    # Control: without the limiter the same measure sees far more.
    free_count = [1.0] * 9 if limit == "rpm" else [a["tokens"] for a in free]
    assert busiest([a["t"] for a in free], free_count, window - slack) > cap


# ---- authentication, secrets, bad input --------------------------------------------------

def test_api_key_checked_and_never_written(quick, tmp_path):
    key = "bbzo-" + secrets.token_hex(16)  # no well-known key prefix: nothing redacts it
    log_file = tmp_path / "run.log"
    handler, root = logging.FileHandler(log_file), logging.getLogger()
    level, _ = root.level, root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # bbzo, openai and httpx log everything to the file
    try:
        with start_server(quick, model_name=NAME, api_key=key) as server:
            good = client(server, api_key=key)
            with Ledger(tmp_path / "ledger.sqlite") as ledger:
                QueryLayer(good, ledger=ledger).submit(chats(3))
            good.close()
            before = server.stats()["received"]
            bad = client(server, api_key="bbzo-wrong-" + secrets.token_hex(8))
            with Ledger(tmp_path / "bad.sqlite") as ledger, \
                    pytest.raises(PermanentError) as failure:
                QueryLayer(bad, ledger=ledger, retry=FAST).submit(chats(1, tag="bad"))
            bad.close()
            stats = server.stats()
            raw = httpx.get(server.url + "/models")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()
    assert failure.value.status == 401
    assert stats["received"] - before == 1 and stats["by_status"]["401"] == 1
    assert raw.status_code == 401 and raw.json()["error"]["code"] == "invalid_api_key"
    for text in (good.id, repr(good), str(failure.value)):
        assert key not in text
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert log_file in files and log_file.stat().st_size > 0
    assert all(key.encode() not in p.read_bytes() for p in files)


class EchoKey(BaseHTTPRequestHandler):
    """A server that answers 401 quoting the key it was sent, as some APIs do."""

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        key = self.headers["Authorization"].removeprefix("Bearer ")
        body = json.dumps({"error": {"message": f"Incorrect API key provided: {key}"}}).encode()
        self.send_response(401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_a_key_echoed_by_the_server_is_scrubbed(tmp_path):
    key = "bbzo-" + secrets.token_hex(16)
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoKey)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = OpenAITarget(NAME, base_url=f"http://127.0.0.1:{server.server_port}/v1",
                          api_key=key)
    try:
        with Ledger(tmp_path / "ledger.sqlite") as ledger, \
                pytest.raises(PermanentError) as failure:
            QueryLayer(target, ledger=ledger).submit(chats(1))
    finally:
        target.close()
        server.shutdown()
        server.server_close()
    assert failure.value.status == 401 and "Incorrect API key" in str(failure.value)
    assert key not in str(failure.value)
    assert all(key.encode() not in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_an_unreachable_server_is_a_transient_error():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    target = OpenAITarget(NAME, base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
    try:
        with pytest.raises(TransientError) as failure:
            asyncio.run(target.acall(chats(1)[0]))
    finally:
        target.close()
    assert failure.value.status is None and "cannot reach" in str(failure.value)


@pytest.fixture(scope="module")
def plain(quick):
    """One fault-free server for the input checks (body limit 2000 bytes)."""
    with start_server(quick, model_name=NAME, max_body_bytes=2000) as server:
        yield server


GOOD = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


@pytest.mark.parametrize("change,status,param", [
    ({"messages": "hi"}, 400, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 3}]}, 400, "messages[0].content"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": "5"}, 400, "max_tokens"),
    ({"temperature": -1}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"n": 0}, 400, "n"),
    ({"seed": 1.5}, 400, "seed"),
    ({"logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    ({"top_logprobs": 2}, 400, "top_logprobs"),
    ({"stream": True}, 400, "stream"),
    ({"stop": 5}, 400, "stop"),
    ({"stop": ""}, 400, "stop"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": "gpt-4o"}, 404, "model"),
])
def test_bad_inputs_answered_with_the_field_named(plain, change, status, param):
    bad = httpx.post(plain.url + "/chat/completions", json={**GOOD, **change})
    ok = httpx.post(plain.url + "/chat/completions", json=GOOD)
    assert bad.status_code == status
    error = bad.json()["error"]
    assert error["param"] == param and param.split("[")[0] in error["message"]
    assert ok.status_code == 200


def test_malformed_and_oversized_bodies(plain):
    url = plain.url + "/chat/completions"
    not_json = httpx.post(url, content=b"{not json")
    nan = httpx.post(url, content=b'{"model": "tiny", "temperature": NaN}')
    big = httpx.post(url, json={**GOOD, "messages": [{"role": "user", "content": "x" * 3000}]})
    ok = httpx.post(url, json=GOOD)
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]["message"]
    assert nan.status_code == 400
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    assert ok.status_code == 200


def test_a_model_error_is_a_400_and_spares_its_neighbours(quick):
    too_long = {**GOOD, "messages": [{"role": "user", "content": "word " * 200}]}
    bodies = [GOOD, too_long, {**GOOD, "seed": 1}, {**GOOD, "seed": 2}]

    async def send_all(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient() as http:
            return await asyncio.gather(*(http.post(url, json=b) for b in bodies))

    with start_server(quick, model_name=NAME) as server:
        server.hold()  # all four queue up, so the model worker may batch them together
        replies: list[httpx.Response] = []
        sender = threading.Thread(target=lambda: replies.extend(
            asyncio.run(send_all(server.url + "/chat/completions"))))
        sender.start()
        wait_for(lambda: len(server.stats()["completions"]) == 4, timeout_s=10)
        server.release()
        sender.join(30)
    assert [r.status_code for r in replies] == [200, 400, 200, 200]
    assert "positions" in replies[1].json()["error"]["message"]


def test_binds_loopback_by_default(quick):
    with start_server(quick) as server:
        assert server.host == "127.0.0.1"
        assert server.url == f"http://127.0.0.1:{server.port}/v1"
        models = httpx.get(server.url + "/models").json()
    assert models["data"][0]["id"] == quick.id  # default model name: the target id


def test_serve_loads_a_spec_and_stops_on_close(letters_dir):
    handles = []
    thread = threading.Thread(target=serve, args=(f"hf:{letters_dir}",),
                              kwargs={"port": 0, "on_ready": handles.append, "device": "cpu"})
    thread.start()
    wait_for(lambda: handles, timeout_s=30)
    models = httpx.get(handles[0].url + "/models").json()
    handles[0].close()
    thread.join(10)
    assert not thread.is_alive()
    assert models["data"][0]["id"] == f"hf:{letters_dir}"  # default model name: the spec


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: ~10 s on 2 cores
def test_serve_command_end_to_end(letters_dir):
    key = "bbzo-" + secrets.token_hex(16)
    env = {**os.environ, "BBZO_SERVE_API_KEY": key, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", "from bbzo.cli.serve import serve_command; serve_command()",
               "--model", f"hf:{letters_dir}", "--model-name", NAME, "--port", "0",
               "--fail", "500:1"]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "serving" not in line:  # skip model-loading progress lines
            line = proc.stderr.readline()
            assert line, "the server exited before serving"
        url = line[line.index("http://"):].split()[0]
        models = httpx.get(url + "/models", headers={"Authorization": f"Bearer {key}"})
        failed = httpx.post(url + "/chat/completions", json=GOOD,
                            headers={"Authorization": f"Bearer {key}"})
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[1]
    assert url.startswith("http://127.0.0.1:")
    assert models.json()["data"][0]["id"] == NAME
    assert failed.status_code == 500  # --fail 500:1 reached the server
    assert proc.returncode == 0 and "stopped" in rest
    assert key not in line + rest
