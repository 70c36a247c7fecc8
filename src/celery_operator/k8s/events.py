"""Kubernetes Events on the users' objects (events.k8s.io/v1): aggregated, rate-limited,
posted in the background. What client-go's EventRecorder and EventCorrelator do, for one
process:

- **Aggregation.** An Event that repeats one already posted (same object, type, reason,
  action, note and related object) within `window` is not a new Event: the existing
  one's `series` (count, lastObservedTime) is patched, at most once per `patch_interval`
  for a series; repeats that arrive meanwhile are folded into that patch. `kubectl
  describe` shows such an Event as "(x20 over 3m)".
- **Rate limits.** A token bucket per object, as client-go's spam filter: a burst of 25
  new Events, then one every 5 minutes; beyond it new Events about that object are dropped
  (repeats of a posted one still count). A global bucket paces every write (10 a second,
  bursts of 50), and at most `max_pending` writes wait: the rest are dropped. A thousand
  apps converging make no Event storm.
- **Never in the way.** `record` takes a lock and returns: a background thread posts. A
  post that fails is logged at debug and counted, never raised into a reconcile. Writes go
  through `client`, so through the leader's write fence: a standby never posts.
- **No credentials.** Every note passes `brokerurl.redact_text` and is cut to the API's
  1024 bytes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

from celery_operator.api.events import BY_REASON, REPORTING_CONTROLLER
from celery_operator.brokerurl import redact_text
from celery_operator.k8s import client

log = logging.getLogger("celery_operator.events")

API_VERSION = "events.k8s.io/v1"
MAX_NOTE_BYTES = 1024  # the API's limit (events.k8s.io/v1 `note`)
MAX_INSTANCE = 128  # ... and `reportingInstance`'s
MAX_NAME = 253

EVENTS = Counter(
    "celery_operator_events_total",
    "Events the operator decided to post, by type and reason (before aggregation and rate limits)",
    ["type", "reason"],
)
POSTS = Counter(
    "celery_operator_event_posts_total",
    "What became of them: created (a new Event), patched (a repeat counted on the Event), "
    "rate_limited (over the object's budget), queue_full, failed (the API refused or did "
    "not answer)",
    ["result"],
)
PENDING = Gauge("celery_operator_event_queue_depth", "Event writes waiting to be posted")


@dataclass(frozen=True)
class ObjectRef:
    """The object an Event is about (`regarding`) or mentions (`related`)."""

    api_version: str
    kind: str
    name: str
    namespace: str = ""
    uid: str = ""

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> ObjectRef:
        meta = body.get("metadata") or {}
        return cls(
            str(body.get("apiVersion", "")),
            str(body.get("kind", "")),
            str(meta.get("name", "")),
            str(meta.get("namespace", "")),
            str(meta.get("uid", "")),
        )

    def as_dict(self) -> dict[str, str]:
        out = {"apiVersion": self.api_version, "kind": self.kind, "name": self.name}
        if self.namespace:
            out["namespace"] = self.namespace
        if self.uid:
            out["uid"] = self.uid
        return out


@dataclass(frozen=True)
class Event:
    """One thing worth telling about an object. Its type and action come from the table
    of reasons (`api.events`)."""

    regarding: ObjectRef
    reason: str
    note: str
    related: ObjectRef | None = None

    @property
    def type(self) -> str:
        return BY_REASON[self.reason].type

    @property
    def action(self) -> str:
        return BY_REASON[self.reason].action


def event(
    body: Mapping[str, Any], reason: str, note: str, related: Mapping[str, Any] | None = None
) -> Event:
    """An Event about `body` (an object as the API returns it). `related` (a child) is
    named without its uid: a child deleted and recreated ten times is one series."""
    if reason not in BY_REASON:
        raise ValueError(f"undocumented Event reason {reason!r}: add it to api/events.py")
    child = None if related is None else dataclasses.replace(ObjectRef.of(related), uid="")
    return Event(ObjectRef.of(body), reason, note, child)


def clean_note(note: str) -> str:
    """What an Event may say: no URL password, one line, at most 1024 bytes."""
    text = " ".join(redact_text(note).split())
    raw = text.encode()
    if len(raw) <= MAX_NOTE_BYTES:
        return text
    return raw[: MAX_NOTE_BYTES - 3].decode(errors="ignore") + "..."


def micro_time(epoch: float) -> str:
    """A metav1.MicroTime."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class RecorderConfig:
    window: float = 600.0  # a repeat within this long joins the Event's series
    patch_interval: float = 10.0  # a series is patched at most this often
    object_burst: int = 25  # new Events about one object: a burst ...
    object_rate: float = 1 / 300  # ... then one per 5 minutes (client-go's spam filter)
    global_burst: int = 50  # every write of the process: bursts ...
    global_rate: float = 10.0  # ... and a sustained rate, per second
    max_pending: int = 1000  # writes waiting beyond this are dropped
    max_series: int = 4096  # series remembered (least recently seen forgotten)
    max_objects: int = 8192  # per-object buckets remembered


@dataclass
class TokenBucket:
    burst: float
    rate: float  # tokens per second
    tokens: float
    stamp: float

    @classmethod
    def full(cls, burst: float, rate: float, now: float) -> TokenBucket:
        return cls(burst, rate, burst, now)

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0: now)."""
        self._refill(now)
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


class Sink(Protocol):
    """Where Events go: the API (`ApiSink`), or a test's list."""

    def create(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def patch(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...


class ApiSink:
    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return client.create_object(body)

    def patch(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return client.patch_object(API_VERSION, "Event", name, namespace, patch)


SeriesKey = tuple[ObjectRef, str, str, str, ObjectRef | None]


@dataclass(eq=False)
class _Series:
    event: Event
    first_time: str  # eventTime: the first occurrence (wall clock)
    last_time: str  # the last occurrence (wall clock)
    last_seen: float  # the last occurrence (monotonic)
    count: int = 1
    name: str = ""  # the Event's name, once created
    posted: int = 0  # the count the API holds (0: not created)
    last_write: float = float("-inf")
    scheduled: bool = False  # a write waits in the queue
    attempts: int = 0  # creates tried (a name collision is tried again once)


@dataclass
class EventRecorder:
    """Aggregates, rate-limits and posts Events. `record` is thread-safe and never blocks
    nor raises; `start` runs the poster thread (tests call `step` themselves)."""

    instance: str  # reportingInstance: who posts (the pod, the leader identity)
    config: RecorderConfig = field(default_factory=RecorderConfig)
    sink: Sink = field(default_factory=ApiSink)
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    _series: OrderedDict[SeriesKey, _Series] = field(default_factory=OrderedDict)
    _buckets: OrderedDict[str, TokenBucket] = field(default_factory=OrderedDict)
    _queue: list[tuple[float, int, _Series]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _wake: threading.Condition = field(init=False)
    _global: TokenBucket = field(init=False)
    _stopped: bool = False
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.instance = self.instance[:MAX_INSTANCE] or "celery-operator"
        self._wake = threading.Condition(self._lock)
        c = self.config
        self._global = TokenBucket.full(c.global_burst, c.global_rate, self.clock())

    # ---- what the controllers call ---------------------------------------------------
    def record(self, ev: Event) -> None:
        try:
            self._record(dataclasses.replace(ev, note=clean_note(ev.note)))
        except Exception:  # an Event is never worth a failed reconcile
            log.debug("cannot record %s %s", ev.reason, ev.regarding.name, exc_info=True)

    def _record(self, ev: Event) -> None:
        EVENTS.labels(ev.type, ev.reason).inc()
        key: SeriesKey = (ev.regarding, ev.type, ev.reason, ev.note, ev.related)
        c = self.config
        with self._wake:
            now, stamp = self.clock(), micro_time(self.wall())
            s = self._series.get(key)
            if s is not None and now - s.last_seen <= c.window:
                s.count += 1
                s.last_seen, s.last_time = now, stamp
                self._series.move_to_end(key)
                if s.posted and not s.scheduled:
                    self._schedule(s, max(now, s.last_write + c.patch_interval))
                return  # else its create waits or runs: it carries (or follows with) the count
            if len(self._queue) >= c.max_pending:
                POSTS.labels("queue_full").inc()
                return
            if not self._bucket(ev.regarding, now).take(now):
                POSTS.labels("rate_limited").inc()
                return
            s = _Series(ev, first_time=stamp, last_time=stamp, last_seen=now)
            self._series[key] = s
            self._series.move_to_end(key)
            while len(self._series) > c.max_series:
                self._series.popitem(last=False)
            self._schedule(s, now)

    def _bucket(self, ref: ObjectRef, now: float) -> TokenBucket:
        key = ref.uid or f"{ref.kind}/{ref.namespace}/{ref.name}"
        bucket = self._buckets.get(key)
        if bucket is None:
            c = self.config
            bucket = self._buckets[key] = TokenBucket.full(c.object_burst, c.object_rate, now)
            while len(self._buckets) > c.max_objects:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def _schedule(self, s: _Series, due: float) -> None:
        s.scheduled = True
        heapq.heappush(self._queue, (due, next(self._seq), s))
        PENDING.set(len(self._queue))
        self._wake.notify()

    # ---- the poster --------------------------------------------------------------------
    def step(self) -> float | None:
        """Posts the next write if it is due and the global budget allows. Returns 0 when
        it posted (or skipped) one, else the seconds until the next is due (None: none
        waits)."""
        with self._wake:
            if not self._queue or self._stopped:
                return None
            now = self.clock()
            due, _, s = self._queue[0]
            if due > now:
                return due - now
            wait = self._global.wait(now)
            if wait > 0:
                return wait
            heapq.heappop(self._queue)
            PENDING.set(len(self._queue))
            s.scheduled = False
            if s.name and s.count <= s.posted:
                return 0.0
            self._global.take(now)
            s.last_write = now
            count, last_time, name = s.count, s.last_time, s.name
            if not name:
                s.attempts += 1
                body = self._create_body(s, count, last_time)
        try:
            if name:
                series = {"count": count, "lastObservedTime": last_time}
                self.sink.patch(s.event.regarding.namespace or "default", name, {"series": series})
                POSTS.labels("patched").inc()
            else:
                answer = self.sink.create(body)
                name = str((answer.get("metadata") or {}).get("name") or body["metadata"]["name"])
                POSTS.labels("created").inc()
        except client.ApiError as e:
            self._failed(s, bool(name), e)
            return 0.0
        with self._wake:
            s.name, s.posted = name, max(s.posted, count)
            if s.count > s.posted and not s.scheduled:
                self._schedule(s, s.last_write + self.config.patch_interval)
        return 0.0

    def _failed(self, s: _Series, patching: bool, e: client.ApiError) -> None:
        with self._wake:
            if patching and e.not_found:
                # The Event expired (the apiserver's --event-ttl, 1 h by default): the
                # series goes on in a new Event.
                s.name, s.posted, s.attempts = "", 0, 0
                self._schedule(s, self.clock())
                return
            if not patching and e.conflict and s.attempts < 2:
                self._schedule(s, self.clock())  # a name taken in the same nanosecond
                return
            POSTS.labels("failed").inc()
            log.debug("cannot post Event %s on %s: %s", s.event.reason, s.event.regarding.name, e)
            if not s.posted:
                # Never created: forget it, so a later occurrence tries a new Event.
                for key, other in list(self._series.items()):
                    if other is s:
                        del self._series[key]

    def _create_body(self, s: _Series, count: int, last_time: str) -> dict[str, Any]:
        ev, ref = s.event, s.event.regarding
        stem = ref.name[: MAX_NAME - 17].rstrip("-.") or "object"
        body: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": "Event",
            "metadata": {
                "name": f"{stem}.{time.time_ns():x}",
                "namespace": ref.namespace or "default",
            },
            "eventTime": s.first_time,
            "reportingController": REPORTING_CONTROLLER,
            "reportingInstance": self.instance,
            "action": ev.action,
            "reason": ev.reason,
            "type": ev.type,
            "note": ev.note,
            "regarding": ref.as_dict(),
        }
        if ev.related is not None:
            body["related"] = ev.related.as_dict()
        if count > 1:
            body["series"] = {"count": count, "lastObservedTime": last_time}
        return body

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    # ---- the thread --------------------------------------------------------------------
    def start(self) -> EventRecorder:
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """No write after this returns (what waits is dropped): called before the Lease
        is given up."""
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._wake:
                if self._stopped:
                    return
            try:
                wait = self.step()
            except Exception:  # never stop posting over one surprise
                log.debug("event poster", exc_info=True)
                wait = 1.0
            if wait == 0:
                continue
            with self._wake:
                if self._stopped:
                    return
                self._wake.wait(timeout=1.0 if wait is None else min(wait, 1.0))


class NullRecorder:
    """Records nothing (tests of the controllers that need no Events)."""

    def record(self, ev: Event) -> None:
        pass

    def stop(self, timeout: float = 2.0) -> None:
        pass


Recorder = EventRecorder | NullRecorder
