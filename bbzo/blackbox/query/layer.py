"""The query layer: the one road from a method's requests to a target and back.

For each request, in order: answered from the ledger if it is there (free, ``cached=True``);
otherwise sent once even if it appears several times or is already in flight in another
``asubmit`` on the same event loop. Sending passes, per target call: the concurrency semaphore,
the rate limiter (rpm/tpm over a sliding minute), the budget (an upper bound on queries, tokens
and dollars reserved before sending; a request costs ``request.queries`` queries, n for a
``classify`` request of n inputs, settled to the true usage after; a request the budget
refuses waits for unsettled reservations and fails only if it still does not fit), the retry
policy, and finally the ledger, which commits the answer before it is handed back (and, for a
remote target, fsyncs it: see ``ledger``). A remote call's requests are first written as
``pending`` rows (a call cut off by a crash may still have been charged, and the audit should
show it); a local call costs nothing, so its answers are the only write: one transaction per
target call.

Local targets (``target.remote`` False) are called in batches of up to ``target.max_batch``
in a worker thread (the layer keeps its workers across submits); remote targets get one
``await target.acall(request)`` per request.

When a request fails for good (permanent error, retries or budget exhausted), requests not yet
sent are cancelled, calls already in flight are allowed to finish and are recorded (their answers
are paid for), and the first error is raised. Everything answered is in the ledger, so running
the same job again resends only what was not answered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import dataclasses
import functools
import logging
import time
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from bbzo.blackbox.budget import Budget, as_budget
from bbzo.blackbox.protocol import Request, Response, Usage
from bbzo.blackbox.query.ledger import Ledger
from bbzo.blackbox.query.limits import (
    RateLimiter,
    RateLimits,
    completion_bound,
    token_bound,
    token_estimate,
)
from bbzo.blackbox.query.pricing import PriceTable
from bbzo.blackbox.query.retry import RetryPolicy, StormWatch, retrying
from bbzo.blackbox.targets.base import Target
from bbzo.errors import BudgetExceeded, InputError, TargetError, TransientError

log = logging.getLogger(__name__)
T = TypeVar("T")


def run_blocking(start: Callable[[], Awaitable[T]]) -> T:
    """The result of the coroutine ``start()``, run to the end on a new event loop. Inside a
    running loop (a notebook, an async app) it runs on a helper thread with its own loop and
    blocks the caller's loop until done; there, prefer awaiting the coroutine."""
    result: list[T] = []

    async def main() -> None:
        # The task returns None: asyncio.run's SIGINT bookkeeping formats the main task's
        # repr, result included, and the repr of 256 answers holding arrays costs ~50 ms.
        result.append(await start())

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(main())
        return result[0]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, main()).result()
    return result[0]


@dataclass
class LayerStats:
    """Running totals of one ``QueryLayer`` (all submits).

    Attributes:
        requests: requests submitted.
        cached: requests answered without contacting the target (ledger or a duplicate).
        sent: requests the target answered.
        queries: model queries the target answered (``Request.queries`` summed over ``sent``:
            a ``classify`` request of n inputs is n); what the query budget was charged.
        cached_queries: model queries of the ``cached`` requests (free).
        attempts: target calls, retries included (a local batch is one call).
        rate_limited: 429 answers.
        failed: requests that failed for good.
        tokens: prompt + completion tokens of answered requests.
        cost: US dollars of answered requests.
    """

    requests: int = 0
    cached: int = 0
    sent: int = 0
    queries: int = 0
    cached_queries: int = 0
    attempts: int = 0
    rate_limited: int = 0
    failed: int = 0
    tokens: int = 0
    cost: float = 0.0


class _LoopState:
    """What concurrent submits on one event loop share: the semaphore, the in-flight keys,
    and the budget reservations not yet settled (a refused request waits for those)."""

    def __init__(self, concurrency: int) -> None:
        self.semaphore = asyncio.Semaphore(concurrency)
        self.inflight: dict[str, asyncio.Future] = {}  # key -> its target call's answers
        self.holding = 0
        self.settled = asyncio.Event()

    def release(self) -> None:
        """One reservation was settled: wake whoever waits for budget."""
        self.holding -= 1
        self.settled.set()
        self.settled = asyncio.Event()


@dataclass
class _Job:
    """One target call's worth of requests (a remote request, or a local batch)."""

    keys: list[str]
    requests: list[Request]
    bound: int
    cost_bound: float
    began: bool = False

    @property
    def queries(self) -> int:
        """Model queries of the job's requests (what the query budget is charged)."""
        return sum(request.queries for request in self.requests)

    @property
    def pairs(self) -> list[tuple[str, Request]]:
        return list(zip(self.keys, self.requests, strict=True))


class _Run:
    """One ``asubmit`` call: its progress and the sends it started."""

    def __init__(self, counts: Counter, progress: Callable[[int, int], None] | None) -> None:
        self.counts = counts
        self.total = sum(counts.values())
        self.done = 0
        self.progress = progress
        self.sends: list[asyncio.Future] = []

    def advance(self, keys: Sequence[str]) -> None:
        step = sum(self.counts[key] for key in keys)
        if step and self.progress is not None:
            self.done += step
            self.progress(self.done, self.total)


class QueryLayer:
    """Sends requests to one target with caching, limits, budgets, retries and a ledger.

    Args:
        target: the model to query.
        ledger: where requests and answers are recorded and looked up; None keeps nothing.
        budget: a ``Budget`` (queries / tokens / dollars), a query count, or None (unlimited);
            queries are model queries (``Request.queries``), not requests.
        limits: ``RateLimits(rpm, tpm)``, or a ``RateLimiter`` (to share limits between layers
            or inject a clock); None for no limits.
        retry: the ``RetryPolicy`` (default ``RetryPolicy()``).
        concurrency: most target calls in flight at once (per event loop).
        progress: called as ``progress(done, total)`` (requests) as answers come in.
        prices: the ``PriceTable`` for remote targets (default: example prices).
        on_warning: called with a one-line message when 429s repeat (also logged).

    The model name used for prices is ``target.model`` when the target has one, else its id.
    """

    def __init__(self, target: Target, *, ledger: Ledger | None = None,
                 budget: Budget | int | None = None,
                 limits: RateLimits | RateLimiter | None = None,
                 retry: RetryPolicy | None = None, concurrency: int = 8,
                 progress: Callable[[int, int], None] | None = None,
                 prices: PriceTable | None = None,
                 on_warning: Callable[[str], None] | None = None) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InputError(f"concurrency must be a positive integer, got {concurrency!r}")
        if not isinstance(target, Target):
            raise InputError(f"target must be a bbzo Target, got {type(target).__name__}")
        self.target = target
        self.ledger = ledger
        self.budget = as_budget(budget)
        self.limiter = limits if isinstance(limits, RateLimiter) else RateLimiter(limits)
        self.retry = retry or RetryPolicy()
        self.concurrency = concurrency
        self.progress = progress
        self.prices = prices or PriceTable()
        self.model = str(getattr(target, "model", None) or target.id)
        self.storm = StormWatch(self.retry, f"target {target.id}", on_warning)
        self.stats = LayerStats()
        self._loops: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # Worker threads for ledger I/O and local batches, kept across submits (every blocking
        # ``submit`` runs a new event loop, whose own default pool would start new threads).
        self._workers = concurrent.futures.ThreadPoolExecutor(
            concurrency + 1, thread_name_prefix=f"bbzo-query-{target.id}")
        if target.remote and self.budget.max_cost is not None \
                and self.prices.price(self.model) is None:
            raise InputError(f"no price for model {self.model!r}, so a cost budget cannot be "
                             f"enforced; add its price (PriceTable / a price file)")

    def submit(self, requests: Sequence[Request], *,
               all_or_nothing: bool = False) -> list[Response]:
        """Blocking ``asubmit``. Inside a running event loop (a notebook, an async app) it runs
        on a helper thread with its own loop and blocks the caller's loop until done; there,
        prefer ``await layer.asubmit(...)``."""
        return run_blocking(lambda: self.asubmit(requests, all_or_nothing=all_or_nothing))

    async def asubmit(self, requests: Sequence[Request], *,
                      all_or_nothing: bool = False) -> list[Response]:
        """Answers to ``requests``, in order. Answers not paid for in this call (ledger hits,
        duplicates) have ``cached=True``, ``cost=0`` and zero usage.

        ``all_or_nothing``: when the query budget cannot cover the queries of every request
        this call would send (ledger hits and duplicates are free), raise ``BudgetExceeded``
        sending none of them (as an objective refuses a whole batch); by default as many are
        sent as fit.

        Raises ``InputError`` (bad request, before anything is sent), ``PermanentError``,
        ``TargetError`` (retries exhausted) or ``BudgetExceeded``; answers that came back before
        the failure are in the ledger."""
        requests = list(requests)
        bounded = self.budget.max_tokens is not None or self.budget.max_cost is not None
        keys = [self._check(request, bounded) for request in requests]
        unique = dict(zip(keys, requests, strict=True))
        run = _Run(Counter(keys), self.progress)
        self.stats.requests += len(requests)
        stored: dict[str, Response] = {}
        if self.ledger is not None and unique:
            stored = await self._in_thread(self.ledger.answers, list(unique))
        loaded = set(stored)
        run.advance(list(stored))
        state = self._loop_state()
        if all_or_nothing:
            self._afford([request for key, request in unique.items() if key not in stored
                          and key not in state.inflight])
        owned, waits = [], []
        for key in unique:
            if key in stored:
                continue
            if key in state.inflight:
                waits.append(self._await_other(key, state.inflight[key], run, stored))
            else:
                owned.append(key)
        chunks = self._chunks(owned)
        flights = [asyncio.get_running_loop().create_future() for _ in chunks]
        for chunk, flight in zip(chunks, flights, strict=True):
            state.inflight.update(dict.fromkeys(chunk, flight))
        fresh: dict[str, Response] = {}
        jobs = [self._job(self._make_job(chunk, [unique[k] for k in chunk]), flight, state, run,
                          fresh) for chunk, flight in zip(chunks, flights, strict=True)]
        try:
            await self._gather(jobs + waits, run)
        finally:
            for key in owned:
                del state.inflight[key]
            for flight in flights:
                if not flight.done():
                    flight.set_result(None)
        return self._assemble(keys, unique, fresh, stored, loaded)

    def _assemble(self, keys: list[str], unique: dict[str, Request], fresh: dict[str, Response],
                  stored: dict[str, Response], loaded: set[str]) -> list[Response]:
        """The first position of a key freshly sent or ``loaded`` from the ledger gets that
        answer; every other position gets a copy (``unique``: the request of each key)."""
        out, hits = [], Counter()
        for key in keys:
            if key in fresh:
                out.append(fresh.pop(key))
                stored[key] = out[-1]
            elif key in loaded:  # read from the ledger for this call: already a private copy
                loaded.discard(key)
                out.append(stored[key])
                hits[key] += 1
            else:
                out.append(dataclasses.replace(stored[key], output=copy.deepcopy(
                    stored[key].output), meta=dict(stored[key].meta), usage=Usage(), cost=0.0,
                    latency_s=0.0, cached=True))
                hits[key] += 1
        self.stats.cached += sum(hits.values())
        self.stats.cached_queries += sum(unique[key].queries * n for key, n in hits.items())
        if self.ledger is not None and hits:
            self.ledger.note_hits(hits)
        return out

    def _afford(self, requests: list[Request]) -> None:
        """Raise ``BudgetExceeded`` unless the query budget covers sending all of ``requests``
        (their ``queries`` summed)."""
        needed = sum(request.queries for request in requests)
        if needed and not self.budget.can_afford(queries=needed):
            raise BudgetExceeded(f"query budget exhausted: {self.budget.queries} of "
                                 f"{self.budget.max_queries} queries used, this batch needs "
                                 f"{needed} new queries in {len(requests)} request(s) (answers "
                                 f"already in the ledger are free)",
                                 nqueries=self.budget.queries)

    def _check(self, request: Request, bounded: bool) -> str:
        """``request``'s key, once the target accepts it (``bounded``: a token or cost budget
        is set, so the request needs a token upper bound)."""
        if not isinstance(request, Request):
            raise InputError(f"submit takes bbzo Request objects, got {type(request).__name__}")
        self.target.check(request)
        if bounded and token_bound(request) is None:
            raise InputError(f"a {request.kind!r} request without params['max_tokens'] has no "
                             f"token upper bound, so a token or cost budget cannot be kept; "
                             f"set max_tokens")
        return request.key(self.target.id)

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if loop not in self._loops:
            self._loops[loop] = _LoopState(self.concurrency)
        return self._loops[loop]

    def _chunks(self, keys: list[str]) -> list[list[str]]:
        size = 1 if self.target.remote else max(1, int(self.target.max_batch))
        return [keys[i:i + size] for i in range(0, len(keys), size)]

    def _price(self, usage: Usage) -> float:
        return self.prices.cost(self.model, usage) if self.target.remote else 0.0

    def _make_job(self, keys: list[str], requests: list[Request]) -> _Job:
        """Size a job: tokens for the limiter and the budget (an upper bound when max_tokens is
        set, so a tokens-per-minute limit holds for the real usage; else an estimate) and the
        dollar upper bound. The limiter is corrected to the real usage after the reply.
        Without a tokens-per-minute limit or a token/cost budget to keep, nothing is sized."""
        if self.limiter.limits.tpm is None and self.budget.max_tokens is None \
                and self.budget.max_cost is None:
            return _Job(keys, requests, 0, 0.0)
        bound, cost_bound = 0, 0.0
        for request in requests:
            total = token_bound(request)
            if total is None:  # no token/cost budget to keep (checked in _check)
                total = token_estimate(request)
            completion = min(total, completion_bound(request) or 0)
            bound += total
            cost_bound += self._price(Usage(total - completion, completion))
        return _Job(keys, requests, bound, cost_bound)

    async def _gather(self, coros: list[Coroutine[Any, Any, None]], run: _Run) -> None:
        """Run all; on the first failure cancel the rest, let sends in flight finish, raise."""
        if not coros:
            return
        tasks = [asyncio.ensure_future(coro) for coro in coros]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*run.sends, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()

    async def _await_other(self, key: str, future: asyncio.Future, run: _Run,
                           stored: dict[str, Response]) -> None:
        """Wait for the same request sent by another submit on this loop (``future``: that
        call's answers by key, or None if it failed)."""
        answers = await asyncio.shield(future)
        response = None if answers is None else answers[key]
        if response is None:
            raise TargetError(f"the same request to target {self.target.id} failed in a "
                              f"concurrent submit; see that error")
        stored[key] = response
        run.advance([key])

    async def _job(self, job: _Job, flight: asyncio.Future, state: _LoopState, run: _Run,
                   fresh: dict[str, Response]) -> None:
        """Send one job with retries; record its answers, or its failure, in the ledger; resolve
        ``flight`` (what concurrent submits of the same keys wait for) with the answers by key,
        or None."""
        tries = 0

        async def attempt(k: int) -> list[Response]:
            nonlocal tries
            async with state.semaphore:
                slot = await self.limiter.acquire(job.bound)
                await self._reserve(job, k, state)
                tries = k
                send = asyncio.ensure_future(self._send(job, slot, k, state))
                run.sends.append(send)
                return await asyncio.shield(send)

        responses = None
        try:
            responses = await retrying(attempt, self.retry, f"target {self.target.id}",
                                       on_transient=self._on_transient)
        except BaseException as err:
            if not isinstance(err, asyncio.CancelledError):
                self.stats.failed += len(job.keys)
            if job.began and self.ledger is not None:
                reason = str(err) or f"cancelled ({type(err).__name__}) before an answer came"
                self.ledger.record_error(self.target.id, job.pairs, reason, tries)
            raise
        finally:
            if not flight.done():
                flight.set_result(None if responses is None
                                  else dict(zip(job.keys, responses, strict=True)))
        fresh.update(zip(job.keys, responses, strict=True))
        run.advance(job.keys)

    async def _reserve(self, job: _Job, k: int, state: _LoopState) -> None:
        """Reserve the job's upper bounds (its model queries on the first attempt only). If the
        budget refuses while other reservations are unsettled, wait for them: their true usage
        is usually below their bound. Raise ``BudgetExceeded`` once nothing else is pending."""
        while True:
            try:
                self.budget.reserve(queries=job.queries if k == 1 else 0,
                                    tokens=job.bound, cost=job.cost_bound)
            except BudgetExceeded:
                if state.holding == 0:
                    raise
                await state.settled.wait()
            else:
                state.holding += 1
                return

    async def _send(self, job: _Job, slot: Any, k: int, state: _LoopState) -> list[Response]:
        """Attempt ``k`` of one job, its budget reserved: call the target, settle, record."""
        n = len(job.requests)
        try:
            if not job.began:
                if self.ledger is not None and self.target.remote:
                    await self._in_thread(self.ledger.begin, self.target.id,
                                            job.pairs)
                job.began = True
            self.stats.attempts += 1
            start = time.perf_counter()
            responses = await self._call(job.requests)
            latency = time.perf_counter() - start
        except BaseException:
            self.budget.settle(tokens=-job.bound, cost=-job.cost_bound)
            state.release()
            raise
        answered, tokens, cost = [], 0, 0.0
        for r in responses:
            price = r.cost or self._price(r.usage)
            answered.append(Response(r.output, r.usage, price, latency, False, r.meta))
            tokens += r.usage.prompt_tokens + r.usage.completion_tokens
            cost += price
        responses = answered
        self.budget.settle(tokens=tokens - job.bound, cost=cost - job.cost_bound)
        state.release()
        if tokens > 0:
            self.limiter.correct(slot, tokens)
        self.stats.sent += n
        self.stats.queries += job.queries
        self.stats.tokens += tokens
        self.stats.cost += cost
        if self.ledger is not None:
            responses = await self._in_thread(functools.partial(
                self.ledger.record, self.target.id,
                list(zip(job.keys, job.requests, responses, strict=True)), k,
                fsync=self.target.remote))
        return responses

    async def _call(self, requests: list[Request]) -> list[Response]:
        """One target call; checks that it answered each request with a Response."""
        if self.target.remote:
            responses = [await self.target.acall(requests[0])]
        else:
            responses = await self._in_thread(self.target.call, requests)
        if not isinstance(responses, list) or len(responses) != len(requests) \
                or not all(isinstance(r, Response) for r in responses):
            raise TargetError(f"target {self.target.id} must answer {len(requests)} request(s) "
                              f"with a list of as many Response objects")
        return responses

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on a worker thread, awaited."""
        return await asyncio.get_running_loop().run_in_executor(self._workers, fn, *args)

    def _on_transient(self, err: TransientError) -> None:
        if err.status == 429:
            self.stats.rate_limited += 1
            self.storm.note()
            if err.retry_after:
                self.limiter.cool_down(err.retry_after)
