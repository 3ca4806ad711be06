"""The cross-request micro-batcher: concurrent requests' work items run together on one model thread."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import contextmanager

from serving.base.settings import BatchConfig


class _Job:
    __slots__ = ("items", "results", "error", "done", "on_done")

    def __init__(self, items: list, on_done: Callable[[], None] | None = None):
        self.items = items
        self.results: list = [None] * len(items)
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.on_done = on_done

    def result(self) -> list:
        """The items' outputs in their order, once the model thread has run them (or its error)."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.results


class MicroBatcher:
    """Runs the work items of concurrent requests together, on one thread that owns the model.

    The scoring server calls `predict` from a thread pool (asyncio.to_thread), one call per request.
    Each call reserves a ticket as soon as it starts (`reserve()`), parses and tokenises in its own
    thread, then hands its items to `Ticket.run` and blocks. The model thread takes the first queued
    request and keeps gathering queued ones until `batch_size` items are collected; while other
    requests hold tickets but are still being parsed it waits for them, up to `wait_ms`. With a single
    client nobody else holds a ticket, so nothing waits. All gathered items are sorted by length and
    cut into batches of at most `batch_size` sequences and `batch_tokens` padded tokens, which keeps
    padding low; results go back to each request in its own order. Only this thread touches the
    model, so the model needs no lock.

    The thread ends once it has had no work for `idle_ms` (None: never, as ServingModel has it on a GPU),
    and the next request starts another. Its torch calls own an OpenMP team (OMP_NUM_THREADS - 1
    threads) for as long as it lives, and libgomp counts every such thread of the process, idle ones
    included: once they outnumber the CPUs, all of them sleep between parallel regions instead of
    spinning, and each of a forward pass' regions then waits for a wake-up. On 2 CPUs, a front that had loaded NeuroQ beside an embedding model kept the
    loading thread's team (and after a completion the generation thread's) beside the embedding thread's,
    and answered batch-1 embeddings 20% slower than a server of that model alone (bench/RESULTS.md).
    """

    def __init__(self, run_batch: Callable[[list], Sequence], config: BatchConfig, name: str = "serving-batcher"):
        self._run_batch = run_batch
        self._config = config
        self._name = name
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._arriving = 0
        self._thread: threading.Thread | None = None
        self.batches_run = 0  # forward passes so far (diagnostics, tests)
        self.requests_run = 0  # requests whose items went through this thread

    @contextmanager
    def reserve(self):
        with self._cond:
            self._arriving += 1
        ticket = _Ticket(self)
        try:
            yield ticket
        finally:
            if not ticket.used:
                with self._cond:
                    self._arriving -= 1
                    self._cond.notify_all()

    def _submit(self, items: list, on_done: Callable[[], None] | None) -> _Job:
        job = _Job(items, on_done)
        with self._cond:
            self._arriving -= 1
            self._queue.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return job

    def _gather(self) -> list[_Job] | None:
        """The jobs of the next round, or None when none came for `idle_ms` (the thread then ends)."""
        with self._cond:
            idle_ms = self._config.idle_ms
            idle_until = None if idle_ms is None else time.monotonic() + idle_ms / 1000
            while not self._queue:
                remaining = None if idle_until is None else idle_until - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self._thread = None  # under the lock: the next _submit starts a new thread
                    return None
                self._cond.wait(remaining)
            jobs = [self._queue.popleft()]
            n_items = len(jobs[0].items)
            deadline = time.monotonic() + self._config.wait_ms / 1000
            while n_items < self._config.batch_size:
                if self._queue:
                    jobs.append(self._queue.popleft())
                    n_items += len(jobs[-1].items)
                    continue
                remaining = deadline - time.monotonic()
                if self._arriving == 0 or remaining <= 0:
                    break
                self._cond.wait(remaining)
            return jobs

    def _loop(self) -> None:
        while (jobs := self._gather()) is not None:
            try:
                for batch in self._plan(jobs):
                    outputs = self._run_batch([jobs[j].items[i] for j, i in batch])
                    self.batches_run += 1
                    for (j, i), output in zip(batch, outputs, strict=True):
                        jobs[j].results[i] = output
            except BaseException as error:  # the waiting requests get it; the thread must survive
                for job in jobs:
                    job.error = error
            self.requests_run += len(jobs)
            for job in jobs:
                job.done.set()
                if job.on_done is not None:
                    job.on_done()

    def _plan(self, jobs: list[_Job]) -> list[list[tuple[int, int]]]:
        keys = [(j, i) for j, job in enumerate(jobs) for i in range(len(job.items))]
        keys.sort(key=lambda k: len(jobs[k[0]].items[k[1]]), reverse=True)
        batches, current, longest = [], [], 0
        for key in keys:
            length = len(jobs[key[0]].items[key[1]])
            longest = max(longest, length)
            full = len(current) >= self._config.batch_size
            over_budget = (len(current) + 1) * longest > self._config.batch_tokens
            if current and (full or over_budget):
                batches.append(current)
                current, longest = [], length
            current.append(key)
        if current:
            batches.append(current)
        return batches


class _Ticket:
    def __init__(self, batcher: MicroBatcher):
        self._batcher = batcher
        self.used = False

    def run(self, items: list) -> list:
        return self.submit(items).result()

    def submit(self, items: list, on_done: Callable[[], None] | None = None) -> _Job:
        """Queue the items and return at once (a streaming request reads its outputs as they are made);
        ``on_done`` is called on the model thread once they have run, and ``result()`` gives them."""
        self.used = True
        return self._batcher._submit(items, on_done)

