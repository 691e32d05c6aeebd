"""Loopback soak of ``bbzo serve``: many clients, a quarter of them hanging up mid-generation,
some bodies exactly at the size limit. Every valid request is answered 200 within its deadline
plus one generation, abandoned work is dropped, and the server's memory stays flat."""

from __future__ import annotations

import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from served import chat_body, endless_target, tiny_folder

from bbzo.blackbox.serve import start_server

pytestmark = pytest.mark.slow

LIMIT = 6000  # body bytes
DEADLINE_S = 5.0
STEP_S = 0.005  # seconds per forward pass: 100 tokens = 0.5 s
ONE_GENERATION_S = 10.0  # a generous bound on one generation on a loaded 2-core machine


def rss_bytes() -> int:
    """Resident memory of this process (the server runs in it)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def body_at_limit() -> bytes:
    base = chat_body(4, user="")
    size = len(httpx.Request("POST", "http://x", json=base).content)
    raw = httpx.Request("POST", "http://x", json={**base, "user": "u" * (LIMIT - size)}).content
    assert len(raw) == LIMIT
    return raw


def one(url: str, i: int, local: threading.local, at_limit: bytes) -> str:
    """Send request ``i``; return "ok", "abandoned" (as planned) or what went wrong."""
    if i % 4 == 0:  # abandoned mid-generation: 100 tokens, gone after 0.1 s
        try:
            httpx.post(url, json=chat_body(100, content=f"left {i}"), timeout=0.1)
        except httpx.TimeoutException:
            return "abandoned"
        return "abandoned-but-answered"
    if not hasattr(local, "client"):
        local.client = httpx.Client(timeout=DEADLINE_S + ONE_GENERATION_S)
    if i % 10 == 1:
        raw, kwargs = at_limit, {}
    else:
        raw, kwargs = None, {"json": chat_body(random.Random(i).randint(1, 20),
                                               content=f"ask {i}")}
    try:
        answer = local.client.post(url, content=raw, **kwargs,
                                   headers={"Content-Type": "application/json"})
    except httpx.HTTPError as err:
        return f"failed: {type(err).__name__}"
    return "ok" if answer.status_code == 200 else f"status {answer.status_code}"


def soak(folder: Path, requests: int, clients: int) -> None:
    target, _ = endless_target(folder, step_s=STEP_S)
    at_limit = body_at_limit()
    with start_server(target, model_name="tiny", max_body_bytes=LIMIT,
                      request_timeout=DEADLINE_S, max_queue=4 * clients) as server:
        url = server.url + "/chat/completions"
        local = threading.local()
        warm = requests // 4
        with ThreadPoolExecutor(clients) as pool:
            first = list(pool.map(lambda i: one(url, i, local, at_limit), range(warm)))
            before = rss_bytes()
            rest = list(pool.map(lambda i: one(url, i, local, at_limit),
                                 range(warm, requests)))
            after = rss_bytes()
        stats = server.stats()
    outcomes = first + rest
    planned = {"abandoned", "abandoned-but-answered"}
    valid = [o for i, o in enumerate(outcomes) if i % 4 != 0]
    assert valid == ["ok"] * len(valid), sorted(set(valid))
    assert {o for i, o in enumerate(outcomes) if i % 4 == 0} <= planned
    codes = stats["by_status"]
    assert codes.get("200", 0) >= len(valid)
    assert codes.get("abandoned", 0) >= 1
    assert not [c for c in codes if c.startswith("5")], codes
    assert after - before < 64 << 20, (before, after)  # flat: under 64 MiB of growth


@pytest.mark.smoke
def test_soak_smoke(tmp_path_factory):
    soak(tiny_folder(tmp_path_factory), requests=40, clients=8)


def test_soak(tmp_path_factory):
    soak(tiny_folder(tmp_path_factory), requests=200, clients=16)
