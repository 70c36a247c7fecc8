"""Measurement hooks for the benchmark's operator process, outside the product.

Put this directory first on the operator's PYTHONPATH (the bench passes
$BENCH_OPERATOR_SRC there: `BENCH_OPERATOR_SRC=$PWD/bench/hooks:$PWD/src`); Python imports
`sitecustomize` at start.

- CO_HEAP=<file>: on SIGUSR1, append a census of the gc-tracked objects by type (count,
  bytes by sys.getsizeof) and the RSS, as one JSON line (`BENCH_HEAP_SIGNAL=<seconds>`
  makes bench.convergence send the signal once converged and wait that long).
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
