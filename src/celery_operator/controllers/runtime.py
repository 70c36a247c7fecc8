"""The controller runtime: a watch-fed cache and a deduplicating work queue.

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
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from celery_operator.k8s.children import controller_uid
from celery_operator.k8s.client import FIELD_MANAGER, ApiError

log = logging.getLogger("celery_operator")

Key = tuple[str, str]  # (namespace, name)
MAX_TOMBSTONES = 10_000
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


@dataclass
class Cache:
    """The latest body of every watched object, by kind. Fed only by watch events."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    apps: dict[Key, dict[str, Any]] = field(default_factory=dict)
    pools: dict[Key, dict[str, Any]] = field(default_factory=dict)
    flowers: dict[Key, dict[str, Any]] = field(default_factory=dict)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)
    # Children by the uid of their controller, then by (apiVersion/kind, namespace, name).
    children: dict[str, dict[tuple[str, str, str], dict[str, Any]]] = field(default_factory=dict)
    # Generation each child had after the operator's own last apply (drift detection).
    applied_generation: dict[str, int] = field(default_factory=dict)
    # Pools and Flowers by the app they name: an app's reconcile reads its own, not all.
    by_app: dict[str, dict[Key, set[Key]]] = field(
        default_factory=lambda: {"pools": {}, "flowers": {}}
    )
    # Uids of children seen deleted (the newest MAX_TOMBSTONES), see put_child.
    _gone: dict[str, None] = field(default_factory=dict)
    # Pods that cannot run, by (namespace, component, owner name): pod name -> (reason,
    # message). Only pods with a problem are kept: a healthy pod costs nothing here.
    pod_problems: dict[tuple[str, str, str], dict[str, tuple[str, str]]] = field(
        default_factory=dict
    )

    def set_pod_problem(
        self, owner: tuple[str, str, str], pod: str, problem: tuple[str, str] | None
    ) -> bool:
        """Records (or clears) a pod's problem; True when that changes what is recorded."""
        with self.lock:
            pods = self.pod_problems.get(owner, {})
            if pods.get(pod) == problem:
                return False
            if problem is None:
                pods.pop(pod, None)
            else:
                pods[pod] = problem
            if pods:
                self.pod_problems[owner] = pods
            else:
                self.pod_problems.pop(owner, None)
            return True

    def pod_problem(self, owner: tuple[str, str, str]) -> tuple[str, str] | None:
        """The problem of the owner's first pod (by name) that cannot run, if any."""
        with self.lock:
            pods = self.pod_problems.get(owner)
            return pods[min(pods)] if pods else None

    def get(self, table: str, key: Key) -> dict[str, Any] | None:
        with self.lock:
            obj: dict[str, Any] | None = getattr(self, table).get(key)
            return obj

    def put(self, table: str, key: Key, body: dict[str, Any] | None) -> dict[str, Any] | None:
        """Stores (or with None, removes) a body; returns the previous one."""
        with self.lock:
            store: dict[Key, dict[str, Any]] = getattr(self, table)
            old = store.get(key)
            if body is None:
                store.pop(key, None)
            else:
                body = slim(body)
                store[key] = body
            index = self.by_app.get(table)
            if index is not None:
                if old is not None:
                    members = index.get(app_key_of(table, old), set())
                    members.discard(key)
                    if not members:
                        index.pop(app_key_of(table, old), None)
                if body is not None:
                    index.setdefault(app_key_of(table, body), set()).add(key)
            return old

    def keys_of_app(self, table: str, app: Key) -> list[Key]:
        """Keys of the pools ("pools") or Flowers ("flowers") that name `app`, sorted."""
        with self.lock:
            return sorted(self.by_app[table].get(app, ()))

    def _of_app(self, table: str, app: Key) -> list[dict[str, Any]]:
        with self.lock:
            store: dict[Key, dict[str, Any]] = getattr(self, table)
            return [store[k] for k in self.keys_of_app(table, app)]

    def pools_of_app(self, app: Key) -> list[dict[str, Any]]:
        return self._of_app("pools", app)

    def flowers_of_app(self, app: Key) -> list[dict[str, Any]]:
        return self._of_app("flowers", app)

    def owned(self, owner_uid: str) -> dict[tuple[str, str, str], dict[str, Any]]:
        with self.lock:
            return dict(self.children.get(owner_uid, {}))

    def child(self, owner_uid: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            return self.children.get(owner_uid, {}).get((kind, namespace, name))

    def put_child(
        self, body: Mapping[str, Any], deleted: bool, *, from_write: bool = False
    ) -> tuple[str | None, bool]:
        """Records a child. Returns (controller uid, whether someone else changed its spec).

        `from_write`: the body is the answer to the operator's own write, which can arrive
        after the watch already brought a newer version (a Deployment's first status) or
        its deletion; the cache never goes back to it then."""
        meta = body.get("metadata") or {}
        owner = controller_uid(body)
        if owner is None:
            return None, False
        ident = (
            f"{body.get('apiVersion')}/{body.get('kind')}",
            meta.get("namespace", ""),
            meta["name"],
        )
        with self.lock:
            owned = self.children.setdefault(owner, {})
            uid = meta.get("uid", "")
            if deleted:
                owned.pop(ident, None)
                if not owned:
                    self.children.pop(owner, None)
                self.applied_generation.pop(uid, None)
                self._gone[uid] = None
                while len(self._gone) > MAX_TOMBSTONES:
                    del self._gone[next(iter(self._gone))]
                return owner, False
            current = owned.get(ident)
            if from_write and (
                uid in self._gone
                or (
                    current is not None
                    and current["metadata"].get("uid") == uid
                    and compare_resource_versions(
                        current["metadata"].get("resourceVersion", ""),
                        meta.get("resourceVersion", ""),
                    )
                    == 1
                )
            ):
                if not owned:
                    self.children.pop(owner, None)
                return owner, False
            owned[ident] = slim(body, child=True)
            gen = int(meta.get("generation", 0))
            ours = self.applied_generation.get(uid)
            drifted = ours is not None and gen > ours
            return owner, drifted

    def note_applied(self, live: Mapping[str, Any]) -> None:
        meta = live.get("metadata") or {}
        with self.lock:
            self.applied_generation[meta.get("uid", "")] = int(meta.get("generation", 0))


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def slim(body: Mapping[str, Any], *, child: bool = False) -> dict[str, Any]:
    """The body as the cache keeps it: without `metadata.managedFields` (except the
    operator's own apply entry, which the replica hand-off reads) and without kubectl's
    last-applied annotation (a second copy of the object). A child also loses its pod
    template: nothing reads it from the cache (the applied-hash annotation and the
    generation say whether a child is as rendered), and it is most of a Deployment."""
    meta = body.get("metadata")
    if not isinstance(meta, dict):
        return dict(body)
    m = dict(meta)
    managed = m.pop("managedFields", None) or []
    ours = [
        e for e in managed if e.get("manager") == FIELD_MANAGER and e.get("operation") == "Apply"
    ]
    if ours:
        m["managedFields"] = ours
    annotations = m.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        m["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    out = {**body, "metadata": m}
    spec = body.get("spec")
    if child and isinstance(spec, dict) and "template" in spec:
        out["spec"] = {k: v for k, v in spec.items() if k != "template"}
    kept: dict[str, Any] = compact(out)
    return kept


def compact(value: Any) -> Any:
    """A copy whose keys and short strings are interned: every body from the watch has its
    own copy of "apiVersion", "metadata", "True", "Ready"..., a third of a cached body."""
    if isinstance(value, dict):
        return {sys.intern(k): compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [compact(v) for v in value]
    if isinstance(value, str) and len(value) <= 64:
        return sys.intern(value)
    return value


def compare_resource_versions(a: str, b: str) -> int | None:
    """-1, 0 or 1 as resourceVersion `a` is older than, the same as or newer than `b`.

    Kubernetes made the resourceVersions of one resource comparable in 1.35 (KEP-5504,
    what every etcd-backed apiserver has always served): positive integers without leading
    zeros, ordered as numbers. None when either is not one: nothing can be said then."""
    for v in (a, b):
        if not (v.isascii() and v.isdigit()) or v.startswith("0"):
            return None
    if len(a) != len(b):
        return 1 if len(a) > len(b) else -1
    return (a > b) - (a < b)


def controller_ref(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def pool_app_key(pool: Mapping[str, Any]) -> Key:
    ref = (pool.get("spec") or {}).get("appRef") or {}
    return (ref.get("namespace") or pool["metadata"]["namespace"], ref.get("name", ""))


def app_key_of(table: str, body: Mapping[str, Any]) -> Key:
    """The app a pool or a Flower names (a Flower's app is always in its own namespace)."""
    if table == "pools":
        return pool_app_key(body)
    return (
        body["metadata"]["namespace"],
        ((body.get("spec") or {}).get("appRef") or {}).get("name", ""),
    )


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body["metadata"]
    return (meta.get("namespace", ""), meta["name"])


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
                    log.error(
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
