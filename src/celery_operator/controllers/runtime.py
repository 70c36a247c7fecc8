"""The controller runtime: a deduplicating work queue (the cache is in `cache.py`).

kopf watches every kind we care about and hands each event to a spy handler, which only
updates the cache and enqueues keys. Worker tasks take keys off the queue and run the
(synchronous) reconcile function of their kind in a thread. A key that is already queued
is not queued twice; a key whose object is being reconciled is run once more afterwards.
This is controller-runtime's workqueue: level-based, so a burst of events for one object
costs one reconcile, and a failed reconcile is retried with exponential backoff.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from celery_operator.api.kinds import Key
from celery_operator.k8s.client import ApiError

log = logging.getLogger("celery_operator")

Item = tuple[str, Key]  # (task kind, key): task kinds are "app", "app-status", "pool", ...

RECONCILES = Counter(
    "celery_operator_reconciles_total", "Reconciles run, by kind and result", ["kind", "result"]
)
RECONCILE_SECONDS = Histogram(
    "celery_operator_reconcile_duration_seconds",
    "Time spent in one reconcile, by kind",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
QUEUE_DEPTH = Gauge("celery_operator_queue_depth", "Keys waiting to be reconciled")
QUEUE_LATENCY = Histogram(
    "celery_operator_queue_latency_seconds",
    "Time a key waits in the queue before its reconcile starts",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)


class Retry(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by a reconcile to be run again after `delay` seconds (no error is counted)."""

    def __init__(self, delay: float, why: str = "") -> None:
        super().__init__(why)
        self.delay = delay


Reconciler = Callable[[Key], None]


class WorkQueue:
    """Deduplicating, retrying work queue; reconcilers run in a thread pool."""

    def __init__(self, reconcilers: Mapping[str, Reconciler], workers: int = 8) -> None:
        self.reconcilers = dict(reconcilers)
        self.workers = workers
        self._queue: asyncio.Queue[Item] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._queued: dict[Item, float] = {}
        self._active: set[tuple[str, Key]] = set()
        self._deferred: set[Item] = set()
        self._scheduled: set[Item] = set()
        self._failures: dict[Item, int] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="reconcile"
        )
        self._tasks: list[asyncio.Task[None]] = []

    @staticmethod
    def _exclusive(item: Item) -> tuple[str, Key]:
        """Items of one object never run at once ("app" and "app-status" share a lock)."""
        return (item[0].split("-")[0], item[1])

    def _call(self, fn: Callable[..., object], *args: Any) -> None:
        """Runs `fn` on the loop: at once from the loop's own thread (watch handlers),
        else through call_soon_threadsafe (reconcile threads)."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    def add(self, kind: str, key: Key, delay: float = 0.0) -> None:
        """Thread-safe: may be called from handlers and from reconcile threads."""
        loop = self._loop
        if loop is None:
            return
        if delay > 0:
            self._call(loop.call_later, delay, self._add, (kind, key))
        else:
            self._call(self._add, (kind, key))

    def add_soon(self, kind: str, key: Key, delay: float) -> None:
        """Thread-safe: runs the item once, `delay` seconds after the first of a burst of
        calls (status roll-ups: ten pool changes in a row make one app status write)."""
        self._call(self._schedule, (kind, key), delay)

    def _schedule(self, item: Item, delay: float) -> None:
        if item in self._scheduled or item in self._queued:
            return
        self._scheduled.add(item)
        assert self._loop is not None
        self._loop.call_later(delay, self._fire, item)

    def _fire(self, item: Item) -> None:
        self._scheduled.discard(item)
        self._add(item)

    def add_many(self, kind: str, keys: Iterable[Key]) -> None:
        for key in keys:
            self.add(kind, key)

    def _add(self, item: Item) -> None:
        assert self._queue is not None
        if item in self._queued:
            return
        self._queued[item] = time.monotonic()
        self._queue.put_nowait(item)
        QUEUE_DEPTH.set(len(self._queued))

    async def start_loop(self) -> None:
        """Accepts keys from now on (they wait until `start`)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._queue = asyncio.Queue()

    async def start(self) -> None:
        """Starts the workers: call once the cache is primed."""
        if self._queue is None:
            await self.start_loop()
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _backoff(self, item: Item) -> float:
        n = self._failures.get(item, 0) + 1
        self._failures[item] = n
        return float(min(0.5 * 2 ** (n - 1), 60.0) * (1 + random.random() / 4))

    async def _worker(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            item = await self._queue.get()
            enqueued = self._queued.pop(item, time.monotonic())
            QUEUE_DEPTH.set(len(self._queued))
            excl = self._exclusive(item)
            if excl in self._active:
                self._deferred.add(item)
                continue
            self._active.add(excl)
            QUEUE_LATENCY.observe(time.monotonic() - enqueued)
            kind, key = item
            started = time.perf_counter()
            result = "ok"
            retry_in: float | None = None
            try:
                await loop.run_in_executor(self._executor, self.reconcilers[kind], key)
                self._failures.pop(item, None)
            except Retry as r:
                result, retry_in = "retry", r.delay
            except ApiError as e:
                if e.namespace_terminating:
                    result = "gone"
                    log.debug("%s %s/%s: namespace is being deleted, nothing to do", kind, *key)
                else:
                    result, retry_in = "error", self._backoff(item)
                    # No answer, 429, 5xx: the apiserver is away or busy; it comes back.
                    say = log.warning if e.transient else log.error
                    say(
                        "reconcile of %s %s/%s failed (retry in %.1fs): %s", kind, *key, retry_in, e
                    )
            except Exception:
                result, retry_in = "error", self._backoff(item)
                log.exception("reconcile of %s %s/%s failed (retry in %.1fs)", kind, *key, retry_in)
            finally:
                RECONCILES.labels(kind, result).inc()
                RECONCILE_SECONDS.labels(kind).observe(time.perf_counter() - started)
                self._active.discard(excl)
                for d in [d for d in self._deferred if self._exclusive(d) == excl]:
                    self._deferred.discard(d)
                    self._add(d)
                if retry_in is not None:
                    loop.call_later(retry_in, self._add, item)
