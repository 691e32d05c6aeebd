"""One worker thread owns the model: HTTP threads hand it requests, it answers in batches.

The worker takes the oldest waiting job and then every job that queued while the previous batch
ran, up to ``max_batch`` requests (a job larger than that goes alone), and makes one
``target.call``. Nothing waits to fill a batch, so an idle server adds no latency and a busy one
batches by itself. If a batch fails, its jobs are retried one by one so a bad request cannot
fail its neighbours.

A job may carry a ``cancel`` event (its client left, its deadline passed): a job cancelled while
it waits is dropped, and a running one is stopped between two tokens when the target's ``call``
takes ``interrupt`` checks (``HFTarget`` does). ``pending`` counts jobs waiting or running, for
the server's queue limit.
"""

from __future__ import annotations

import inspect
import queue
import threading
from concurrent.futures import Future

from bbzo.blackbox.protocol import Request, Response
from bbzo.blackbox.targets.base import Target
from bbzo.errors import TargetError

_STOP = object()


class Cancelled(TargetError):
    """The job was cancelled before it ran."""


class Batcher:
    """Serialises and batches calls to a local target.

    Args:
        target: a local target (``target.call``); only this worker ever touches it.
        max_batch: most requests per call (default ``target.max_batch``).
    """

    def __init__(self, target: Target, max_batch: int | None = None) -> None:
        self.target = target
        self.max_batch = max_batch or max(1, int(target.max_batch))
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._pending: set[threading.Event] = set()
        self._interruptible = "interrupt" in inspect.signature(target.call).parameters
        self._thread = threading.Thread(target=self._work, name="bbzo-serve-model", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet answered (waiting or running)."""
        with self._lock:
            return len(self._pending)

    def submit(self, requests: list[Request], cancel: threading.Event | None = None) -> Future:
        """A future of ``requests``' responses, in order; setting ``cancel`` drops the job or
        stops its generation early (the future then holds ``Cancelled`` or cut answers)."""
        future: Future = Future()
        cancel = cancel or threading.Event()
        with self._lock:
            if self._closed:
                future.set_exception(TargetError("the server is shutting down"))
                return future
            self._pending.add(cancel)
        future.add_done_callback(lambda _: self._done(cancel))
        self._jobs.put((requests, future, cancel))
        return future

    def _done(self, cancel: threading.Event) -> None:
        with self._lock:
            self._pending.discard(cancel)

    def close(self) -> None:
        """Stop the worker: jobs still queued or running are cancelled (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                for cancel in self._pending:
                    cancel.set()
                self._jobs.put(_STOP)
        self._thread.join()

    def _work(self) -> None:
        held = None
        while True:
            job = self._jobs.get() if held is None else held
            held = None
            if job is _STOP:
                return
            batch, size = [job], len(job[0])
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP or size + len(job[0]) > self.max_batch:
                    held = job
                    break
                batch.append(job)
                size += len(job[0])
            self._run(batch)

    def _run(self, batch: list[tuple[list[Request], Future, threading.Event]]) -> None:
        """Answer every job of ``batch`` (its future gets the responses or the error)."""
        live = []
        for job in batch:
            if job[2].is_set():
                job[1].set_exception(Cancelled("cancelled before it ran"))
            else:
                live.append(job)
        batch = live
        if not batch:
            return
        try:
            answers = self._call([r for requests, _, _ in batch for r in requests],
                                 [cancel.is_set for requests, _, cancel in batch
                                  for _ in requests])
        except Exception as err:
            if len(batch) == 1:
                batch[0][1].set_exception(err)
                return
            for job in batch:
                self._run([job])
            return
        start = 0
        for requests, future, _ in batch:
            future.set_result(answers[start:start + len(requests)])
            start += len(requests)

    def _call(self, requests: list[Request], checks: list) -> list[Response]:
        answers = (self.target.call(requests, interrupt=checks) if self._interruptible
                   else self.target.call(requests))
        if len(answers) != len(requests):
            raise RuntimeError(f"target {self.target.id} answered {len(answers)} of "
                               f"{len(requests)} requests")
        return answers
