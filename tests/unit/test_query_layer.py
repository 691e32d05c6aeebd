"""The query layer against real in-process targets: caching, order, retries, limits, budgets."""

import asyncio
import logging
import random
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbzo.blackbox.budget import Budget
from bbzo.blackbox.protocol import Request, Response, Usage, error_for_status, parse_retry_after
from bbzo.blackbox.query.layer import QueryLayer
from bbzo.blackbox.query.ledger import Ledger
from bbzo.blackbox.query.limits import RateLimiter, RateLimits, token_bound, token_estimate
from bbzo.blackbox.query.pricing import Price, PriceTable
from bbzo.blackbox.query.retry import RetryPolicy
from bbzo.blackbox.targets.base import Target
from bbzo.errors import (
    BudgetExceeded,
    InputError,
    PermanentError,
    TargetError,
    TransientError,
)

FAST = RetryPolicy(base_delay_s=0.001, max_delay_s=0.01)
PRICES = PriceTable({"echo-1": Price(prompt=1000.0, completion=2000.0)})  # $ per 1M tokens


class Arith(Target):
    """A local batched target: each answer is the sum of the request's numbers."""

    id = "arith"
    capabilities = frozenset({"classify"})
    max_batch = 4

    def __init__(self) -> None:
        self.batches: list[int] = []

    def call(self, requests):
        self.batches.append(len(requests))
        return [Response({"probs": [[float(sum(r.payload["inputs"]))]]}) for r in requests]


class Echo(Target):
    """A remote-style async target: upper-cases the last message after ``latency`` seconds.

    ``failures`` are raised, in order, by the first calls (shared by all requests).
    ``clock`` (if given) is read at each call and logged in ``times``.
    """

    id = "echo:test"
    model = "echo-1"
    capabilities = frozenset({"chat"})
    remote = True

    def __init__(self, failures=(), latency=0.0, clock=None, seed=0) -> None:
        self.failures = list(failures)
        self.latency = latency
        self.clock = clock
        self.rng = random.Random(seed)
        self.calls = 0
        self.times: list[float] = []

    async def acall(self, request):
        self.calls += 1
        if self.clock is not None:
            self.times.append(self.clock())
        if self.latency:
            await asyncio.sleep(self.rng.uniform(0, self.latency))
        if self.failures:
            raise self.failures.pop(0)
        text = request.payload["messages"][-1]["content"]
        completion = min(len(text), request.params.get("max_tokens", 16))
        return Response({"text": text.upper()}, usage=Usage(len(text) // 4 + 1, completion))


def chat(text, max_tokens=8, sample=0):
    return Request("chat", {"messages": [{"role": "user", "content": text}]},
                   {"max_tokens": max_tokens}, sample=sample)


class FakeClock:
    """Virtual time: ``sleep(dt)`` yields once, then moves the clock to at least now + dt."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep(self, dt: float) -> None:
        wake = self.t + dt
        await asyncio.sleep(0)
        self.t = max(self.t, wake)


def max_in_window(times, window, weights=None):
    """Largest count (or weight sum) of events in any half-open window [t, t + window)."""
    weights = weights or [1] * len(times)
    return max(sum(w for s, w in zip(times, weights, strict=True) if t <= s < t + window)
               for t in times)


# --- requests and keys -------------------------------------------------------------------

def test_key_stable_under_dict_order_and_caller_mutation(tmp_path):
    messages = [{"role": "user", "content": "2+2?"}]
    a = Request("chat", {"messages": messages}, {"max_tokens": 3, "temperature": 0.0})
    b = Request("chat", {"messages": [{"content": "2+2?", "role": "user"}]},
                {"temperature": 0.0, "max_tokens": 3})
    key = a.key("t")
    assert key == b.key("t") and key != a.key("other-target") and key != chat("2+2?").key("t")
    messages[0]["content"] = "changed"
    assert a.key("t") == key and a.payload["messages"][0]["content"] == "2+2?"

    target = Echo()
    layer = QueryLayer(target, ledger=Ledger(tmp_path / "l.sqlite"))
    first = layer.submit([a])[0]
    messages[0]["content"] = "2+2?"
    again = layer.submit([Request("chat", {"messages": messages},
                                  {"max_tokens": 3, "temperature": 0.0})])[0]
    assert target.calls == 1 and again.cached and again.output == first.output


# --- caching, order, batching ------------------------------------------------------------

def test_cache_hit_costs_nothing_and_skips_target(tmp_path):
    target = Echo()
    budget = Budget(max_cost=1.0)
    ledger = Ledger(tmp_path / "l.sqlite")
    layer = QueryLayer(target, ledger=ledger, budget=budget, prices=PRICES)
    requests = [chat(f"question {i}") for i in range(5)]
    first = layer.submit(requests)
    spent = (budget.queries, budget.tokens, budget.cost)
    assert target.calls == 5 and all(r.cost > 0 and not r.cached for r in first)
    assert spent[2] == pytest.approx(sum(r.cost for r in first))

    layer2 = QueryLayer(target, ledger=ledger, budget=budget, prices=PRICES)
    second = layer2.submit(requests)
    assert target.calls == 5
    assert all(r.cached and r.cost == 0 and r.usage.total == 0 for r in second)
    assert [r.output for r in second] == [r.output for r in first]
    assert (budget.queries, budget.tokens, budget.cost) == spent
    summary = ledger.summary()
    assert (summary.answered, summary.cache_hits) == (5, 5)
    assert summary.cost == pytest.approx(spent[2])


def test_local_batches_order_and_duplicates():
    target = Arith()
    layer = QueryLayer(target)
    requests = [Request("classify", {"inputs": [i, 1]}) for i in range(10)]
    out = layer.submit(requests + requests[:3])
    assert [r.output["probs"][0][0] for r in out] == [i + 1 for i in range(10)] + [1, 2, 3]
    assert sorted(target.batches) == [2, 4, 4]
    assert [r.cached for r in out] == [False] * 10 + [True] * 3
    assert (layer.stats.sent, layer.stats.cached) == (10, 3)


def test_concurrent_submits_share_in_flight_requests():
    target = Echo(latency=0.05)
    layer = QueryLayer(target)

    async def both():
        return await asyncio.gather(layer.asubmit([chat("a"), chat("b")]),
                                    layer.asubmit([chat("b"), chat("c")]))

    left, right = asyncio.run(both())
    assert target.calls == 3
    assert left[1].output == right[0].output == {"text": "B"}
    assert left[1].cached != right[0].cached


def test_sync_submit_inside_a_running_loop():
    layer = QueryLayer(Echo())

    async def caller():
        return layer.submit([chat("x")])

    assert asyncio.run(caller())[0].output == {"text": "X"}


def test_progress_reports_every_request():
    seen = []
    QueryLayer(Arith(), progress=lambda done, total: seen.append((done, total))).submit(
        [Request("classify", {"inputs": [i]}) for i in range(9)])
    assert seen[-1] == (9, 9) and [d for d, _ in seen] == sorted(d for d, _ in seen)


# --- retries -----------------------------------------------------------------------------

def test_retry_honours_retry_after(tmp_path):
    target = Echo(failures=[TransientError("slow down", status=429, retry_after=0.3)])
    ledger = Ledger(tmp_path / "l.sqlite")
    start = time.perf_counter()
    out = QueryLayer(target, ledger=ledger, retry=FAST).submit([chat("hi")])
    elapsed = time.perf_counter() - start
    assert elapsed >= 0.3 and out[0].output == {"text": "HI"}
    assert target.calls == 2 and ledger.summary().attempts == 2


def test_401_fails_at_once_with_one_line_and_is_retried_on_resume(tmp_path):
    ledger = Ledger(tmp_path / "l.sqlite")
    target = Echo(failures=[PermanentError("Incorrect API key provided", status=401)])
    with pytest.raises(PermanentError) as info:
        QueryLayer(target, ledger=ledger, retry=FAST).submit([chat("hi")])
    message = str(info.value)
    assert "401" in message and "API key" in message and "\n" not in message
    assert target.calls == 1
    summary = ledger.summary()
    assert (summary.errors, summary.attempts, summary.answered) == (1, 1, 0)

    healthy = Echo()
    assert QueryLayer(healthy, ledger=ledger).submit([chat("hi")])[0].output == {"text": "HI"}
    assert healthy.calls == 1 and ledger.summary().answered == 1


def test_gives_up_after_max_attempts_without_a_retryable_error():
    target = Echo(failures=[TransientError("bad gateway", status=502)] * 5)
    with pytest.raises(TargetError, match="gave up after 3 attempts") as info:
        QueryLayer(target, retry=RetryPolicy(max_attempts=3, base_delay_s=0.001)).submit(
            [chat("hi")])
    assert not isinstance(info.value, TransientError)  # so no outer layer retries again
    assert target.calls == 3


def test_total_wait_cap_stops_long_retry_after():
    target = Echo(failures=[TransientError("later", status=429, retry_after=100.0)])
    start = time.perf_counter()
    with pytest.raises(TargetError, match="max_total_wait_s"):
        QueryLayer(target, retry=RetryPolicy(max_total_wait_s=1.0)).submit([chat("hi")])
    assert time.perf_counter() - start < 0.5 and target.calls == 1


def test_429_storm_is_reported(caplog):
    warnings = []
    target = Echo(failures=[TransientError("rate limited", status=429, retry_after=0.01)] * 4)
    layer = QueryLayer(target, retry=FAST, concurrency=16, on_warning=warnings.append)
    with caplog.at_level(logging.WARNING):
        out = layer.submit([chat(f"q{i}") for i in range(16)])
    assert [r.output["text"] for r in out] == [f"Q{i}" for i in range(16)]
    assert len(warnings) == 1 and "429" in warnings[0]
    assert any("429" in rec.getMessage() for rec in caplog.records)
    assert layer.stats.rate_limited == 4 and target.calls == 20


def test_jittered_backoff_law():
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=6.0)
    rng = random.Random(0)
    for attempt, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (5, 6.0)]:
        waits = [policy.delay(attempt, None, rng) for _ in range(4000)]
        assert 0 <= min(waits) and max(waits) <= cap
        assert sum(waits) / len(waits) == pytest.approx(cap / 2, rel=0.05)  # uniform mean
    assert min(policy.delay(1, 9.0, rng) for _ in range(100)) == 9.0


def test_status_classification_and_retry_after_parsing():
    assert isinstance(error_for_status(429, "x", 2.0), TransientError)
    assert isinstance(error_for_status(503, "x"), TransientError)
    assert isinstance(error_for_status(401, "x"), PermanentError)
    assert isinstance(error_for_status(400, "x"), PermanentError)
    assert parse_retry_after("7") == 7.0 and parse_retry_after(None) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None


# --- rate limits -------------------------------------------------------------------------

def test_rpm_never_exceeded_through_the_layer():
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(rpm=5), clock=clock.now, sleep=clock.sleep)
    target = Echo(clock=clock.now)
    out = QueryLayer(target, limits=limiter, concurrency=16).submit(
        [chat(f"q{i}") for i in range(23)])
    assert len(out) == 23 and target.calls == 23
    assert max_in_window(target.times, 60.0) == 5
    assert max(target.times) == pytest.approx(4 * 60.0, abs=1e-3)  # no slower than needed


@settings(max_examples=40, deadline=None)
@given(rpm=st.integers(1, 6), tpm=st.integers(20, 60), window=st.sampled_from([1.0, 60.0]),
       sizes=st.lists(st.integers(0, 20), min_size=1, max_size=30),
       gaps=st.lists(st.floats(0, 30), min_size=30, max_size=30),
       shrink=st.lists(st.floats(0, 1), min_size=30, max_size=30))
def test_limiter_window_property(rpm, tpm, window, sizes, gaps, shrink):
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(rpm=rpm, tpm=tpm), window_s=window, clock=clock.now,
                          sleep=clock.sleep)
    admitted = []

    async def one(i, size):
        await clock.sleep(gaps[i] * window / 60)
        slot = await limiter.acquire(size)
        true = int(size * shrink[i])  # the reply used fewer tokens than estimated
        limiter.correct(slot, true)
        admitted.append((slot.time, true))

    async def main():
        await asyncio.gather(*(one(i, size) for i, size in enumerate(sizes)))

    asyncio.run(main())
    times = [t for t, _ in admitted]
    assert len(admitted) == len(sizes)
    assert max_in_window(times, window) <= rpm
    assert max_in_window(times, window, [n for _, n in admitted]) <= tpm


def test_tpm_limit_with_real_small_window():
    limiter = RateLimiter(RateLimits(tpm=100), window_s=0.3)
    admitted = []

    async def one(size):
        slot = await limiter.acquire(size)
        admitted.append((slot.time, size))

    async def main():
        await asyncio.gather(*(one(40) for _ in range(6)))

    start = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - start >= 0.6  # 6 x 40 tokens need three windows of 100
    times = [t for t, _ in admitted]
    assert max_in_window(times, 0.3, [n for _, n in admitted]) <= 100


def test_request_larger_than_tpm_is_refused():
    with pytest.raises(InputError, match="tokens per minute"):
        QueryLayer(Echo(), limits=RateLimits(tpm=10)).submit([chat("x" * 200)])


def test_token_sizes():
    request = chat("abcdefgh", max_tokens=5)
    assert token_estimate(request) == 3 + 5  # ceil(len("user" + "abcdefgh") / 4) + max_tokens
    text = "naïve café ✓ 東京"  # more UTF-8 bytes than characters
    assert token_bound(chat(text, max_tokens=5)) >= len(text.encode("utf-8")) + 5 > len(text) + 5
    assert token_bound(Request("chat", {"messages": []})) is None


# --- budgets -----------------------------------------------------------------------------

@pytest.mark.parametrize("budget", [Budget(max_queries=30), Budget(max_cost=0.5),
                                    Budget(max_tokens=900)])
def test_budget_never_exceeded_under_concurrency(tmp_path, budget):
    target = Echo(latency=0.02, seed=1)
    ledger = Ledger(tmp_path / "l.sqlite")
    layer = QueryLayer(target, ledger=ledger, budget=budget, prices=PRICES, concurrency=16)
    requests = [chat(f"question number {i} " + "x" * (i % 7), max_tokens=12)
                for i in range(100)]
    with pytest.raises(BudgetExceeded):
        layer.submit(requests)
    summary = ledger.summary()
    assert 0 < summary.answered == target.calls  # every paid call was kept
    assert budget.queries == target.calls  # no reservation leaked
    assert budget.tokens == summary.prompt_tokens + summary.completion_tokens
    assert budget.cost == pytest.approx(summary.cost)
    # Never over the limit, and stopped only when the next request's bound truly did not fit.
    biggest = [1, max(token_bound(r) for r in requests),
               max(PRICES.cost("echo-1", Usage(token_bound(r) - 12, 12)) for r in requests)]
    for spent, limit, step in zip([budget.queries, budget.tokens, budget.cost],
                                  [budget.max_queries, budget.max_tokens, budget.max_cost],
                                  biggest, strict=True):
        assert limit is None or limit - step < spent <= limit

    stored = ledger.answers([r.key(target.id) for r in requests])
    answered = [r for r in requests if r.key(target.id) in stored]
    before = (budget.queries, budget.tokens, budget.cost, target.calls)
    out = layer.submit(answered)
    assert all(r.cached for r in out)
    assert (budget.queries, budget.tokens, budget.cost, target.calls) == before


def test_cost_budget_needs_max_tokens_and_a_price():
    with pytest.raises(InputError, match="max_tokens"):
        QueryLayer(Echo(), budget=Budget(max_cost=1.0), prices=PRICES).submit(
            [Request("chat", {"messages": [{"role": "user", "content": "hi"}]})])
    with pytest.raises(InputError, match="no price"):
        QueryLayer(Echo(), budget=Budget(max_cost=1.0), prices=PriceTable(defaults=False))


# --- pricing -----------------------------------------------------------------------------

def test_price_table(tmp_path):
    table = PriceTable()
    assert table.price("gpt-4o-mini-2024-07-18") == table.price("gpt-4o-mini")
    assert table.cost("gpt-4o-mini", Usage(1_000_000, 0)) == pytest.approx(
        table.prices["gpt-4o-mini"].prompt)
    assert table.cost("my-local-model", Usage(10, 10)) == 0.0
    assert table.unknown == {"my-local-model"}
    path = tmp_path / "prices.json"
    path.write_text('{"gpt-4o": {"prompt": 1, "completion": 3}}')
    assert PriceTable.from_json(path).cost("gpt-4o", Usage(2_000_000, 1_000_000)) == 5.0
    with pytest.raises(InputError, match="non-negative"):
        PriceTable({"m": (-1, 2)})


def test_all_or_nothing_refuses_a_batch_that_does_not_fit_whole(tmp_path):
    target = Arith()
    ledger = Ledger(tmp_path / "l.sqlite")
    layer = QueryLayer(target, ledger=ledger, budget=Budget(max_queries=6))
    old = [Request("classify", {"inputs": [i]}) for i in range(4)]
    layer.submit(old)
    new = [Request("classify", {"inputs": [10 + i]}) for i in range(3)]
    with pytest.raises(BudgetExceeded, match="3 new queries"):
        layer.submit(old + new, all_or_nothing=True)  # 3 new, 2 left: none sent
    assert (layer.budget.queries, sum(target.batches), ledger.summary().requests) == (4, 4, 4)
    out = layer.submit(old + new[:2], all_or_nothing=True)  # the 4 old ones are free
    assert [r.cached for r in out] == [True] * 4 + [False] * 2
    assert layer.budget.queries == 6


def test_a_classify_request_of_n_inputs_costs_n_queries(tmp_path):
    target = Arith()
    ledger = Ledger(tmp_path / "l.sqlite")
    five = Request("classify", {"inputs": np.arange(5.0)})  # 5 inputs of shape ()
    three = Request("classify", {"inputs": [1, 2, 3]})
    short = QueryLayer(target, ledger=ledger, budget=Budget(max_queries=4))
    with pytest.raises(BudgetExceeded, match="needs 5 new queries"):
        short.submit([five], all_or_nothing=True)
    with pytest.raises(BudgetExceeded):
        short.submit([five])  # as many as fit: none
    assert (short.budget.queries, target.batches, ledger.summary().requests) == (0, [], 0)
    layer = QueryLayer(target, ledger=ledger, budget=Budget(max_queries=5))
    out = layer.submit([five, five], all_or_nothing=True)  # the duplicate is free
    assert [r.cached for r in out] == [False, True] and layer.budget.queries == 5
    s = layer.stats
    assert (s.requests, s.sent, s.queries, s.cached, s.cached_queries) == (2, 1, 5, 1, 5)
    later = QueryLayer(target, ledger=ledger, budget=Budget(max_queries=3))
    out = later.submit([five, three], all_or_nothing=True)  # five from the ledger: free
    assert [r.cached for r in out] == [True, False] and later.budget.queries == 3
    assert (later.stats.sent, later.stats.queries, later.stats.cached_queries) == (1, 3, 5)
    summary = ledger.summary()
    assert (summary.requests, summary.queries, summary.cache_hits) == (2, 8, 2)
    assert summary.targets["arith"]["queries"] == 8
