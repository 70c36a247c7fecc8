"""Measurement hooks for the benchmark's operator process, outside the product.

Put this directory first on the operator's PYTHONPATH (the bench passes
$BENCH_OPERATOR_SRC there: `BENCH_OPERATOR_SRC=$PWD/bench/hooks:$PWD/src`); Python imports
`sitecustomize` at start.

- CO_HEAP=<file>: on SIGUSR1, append a census of the gc-tracked objects by type (count,
  bytes by sys.getsizeof) and the RSS, as one JSON line (`BENCH_HEAP_SIGNAL=<seconds>`
  makes bench.convergence send the signal once converged and wait that long).
- CO_TRACEMALLOC=<file>: trace allocations from the start (tracemalloc, 1 frame) and, on
  SIGUSR1, append the 40 source lines holding the most live memory as one JSON line.
- CO_TRACE=<file>: append every status write (object, conditions, other fields) as one
  JSON line, to classify them (first, a condition moved, a message, identical).
"""

from __future__ import annotations

import collections
import gc
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any


def _census(signum: int, frame: Any) -> None:
    counts: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    for o in gc.get_objects():
        name = type(o).__name__
        counts[name] += 1
        sizes[name] += sys.getsizeof(o)
    status = Path("/proc/self/status").read_text().splitlines()
    rss = int(next(ln for ln in status if ln.startswith("VmRSS")).split()[1])
    row = {
        "t": time.time(),
        "rss_kib": rss,
        "types": {t: [counts[t], sizes[t]] for t, _ in sizes.most_common(25)},
    }
    with Path(os.environ["CO_HEAP"]).open("a") as fh:
        fh.write(json.dumps(row) + "\n")


if os.environ.get("CO_HEAP"):
    signal.signal(signal.SIGUSR1, _census)


def _lines(signum: int, frame: Any) -> None:
    import tracemalloc

    snap = tracemalloc.take_snapshot()
    top = snap.statistics("lineno")
    row = {
        "t": time.time(),
        "traced_kib": sum(s.size for s in top) // 1024,
        "lines": [[str(s.traceback[0]), s.count, s.size // 1024] for s in top[:40]],
    }
    try:
        row["cache"] = _cache_census()
    except Exception as e:  # a census must not end the process it looks at
        row["cache"] = {"error": repr(e)}
    with Path(os.environ["CO_TRACEMALLOC"]).open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def _deep(value: Any, seen: set[int]) -> tuple[int, int]:
    """(containers, bytes) of the dicts, lists and tuples under `value`, and of its
    strings not seen before (an interned string counts once)."""
    if id(value) in seen:
        return 0, 0
    seen.add(id(value))
    n, size = 0, sys.getsizeof(value)
    if isinstance(value, dict):
        n += 1
        for k, v in value.items():
            a, b = _deep(k, seen)
            c, d = _deep(v, seen)
            n, size = n + a + c, size + b + d
    elif isinstance(value, (list, tuple)):
        n += 1
        for v in value:
            a, b = _deep(v, seen)
            n, size = n + a, size + b
    elif hasattr(value, "__dataclass_fields__"):
        for f in value.__dataclass_fields__:
            a, b = _deep(getattr(value, f), seen)
            n, size = n + a, size + b
    return n, size


def _cache_census() -> dict[str, Any]:
    """Containers and bytes of each part of the operator's cache (bench/hooks only)."""
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for o in gc.get_objects():
        name = f"{getattr(type(o), '__module__', '')}.{getattr(type(o), '__name__', '')}"
        if name == "celery_operator.controllers.cache.Cache":
            for kind, table in o.tables.items():
                out[f"table {kind}"] = _deep(table, seen)
            out["children"] = _deep(o.children, seen)
            out["applied"] = _deep(o.applied, seen)
            out["worker_pods"] = _deep(o.worker_pods, seen)
        elif name == "celery_operator.controllers.events.EventMemory":
            for attr, v in vars(o).items():
                out[f"memory {attr}"] = _deep(getattr(v, "_items", v), seen)
    return out


if os.environ.get("CO_TRACEMALLOC"):
    import tracemalloc

    tracemalloc.start(1)
    signal.signal(signal.SIGUSR1, _lines)

if os.environ.get("CO_TRACE"):
    from celery_operator.k8s import client as _client

    _lock = threading.Lock()
    _out = Path(os.environ["CO_TRACE"]).open("a", buffering=1)  # noqa: SIM115 - for the process's life
    _patch = _client.patch_status

    def _traced(api_version: str, kind: str, name: str, namespace: str | None, status: Any) -> Any:
        conds = [
            (c["type"], c["status"], c["reason"], c.get("message", ""))
            for c in status.get("conditions") or []
        ]
        rest = {k: v for k, v in status.items() if k != "conditions"}
        row = {"t": time.monotonic(), "status": f"{kind}/{namespace}/{name}", "c": conds, "f": rest}
        with _lock:
            _out.write(json.dumps(row, default=str) + "\n")
        return _patch(api_version, kind, name, namespace, status)

    _client.patch_status = _traced  # looked up at call time by the controllers
