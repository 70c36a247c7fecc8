"""Counting what happened to tasks, from the example app's own records.

The example app (examples/app/shop/worker.py) appends a JSON line to the Redis list
`shop:events` when a task starts and when it finishes. A Ledger reads that list and the
tasks the test sent, and says how many were sent, started, completed, duplicated (started
more than once), killed (started, never finished) and lost (never started).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import redis

EVENTS_KEY = "shop:events"


@dataclass
class Tally:
    sent: int
    started: int
    completed: int
    duplicated: list[str]
    unfinished: list[str]  # started, never finished (killed, or still running)
    lost: list[str]  # never started

    def __str__(self) -> str:
        return (
            f"sent {self.sent}, started {self.started}, completed {self.completed}, "
            f"duplicated {len(self.duplicated)}, unfinished {len(self.unfinished)}, "
            f"lost {len(self.lost)}"
        )

    @property
    def exactly_once(self) -> bool:
        return (
            self.completed == self.sent
            and not self.duplicated
            and not self.unfinished
            and not self.lost
        )


@dataclass
class Ledger:
    client: redis.Redis
    sent: list[str] = field(default_factory=list)  # task ids

    def events(self) -> list[dict[str, object]]:
        return [json.loads(e) for e in self.client.lrange(EVENTS_KEY, 0, -1)]

    def hosts_of(self, task_id: str) -> list[str]:
        return [str(e["host"]) for e in self.events() if e["id"] == task_id]

    def tally(self) -> Tally:
        ev = [e for e in self.events() if e["id"] in set(self.sent)]
        starts = Counter(str(e["id"]) for e in ev if e["event"] == "started")
        finishes = Counter(str(e["id"]) for e in ev if e["event"] == "finished")
        return Tally(
            sent=len(self.sent),
            started=len(starts),
            completed=sum(1 for t in self.sent if finishes[t] >= 1),
            duplicated=[t for t in self.sent if starts[t] > 1 or finishes[t] > 1],
            unfinished=[t for t in self.sent if starts[t] > finishes[t]],
            lost=[t for t in self.sent if starts[t] == 0 and finishes[t] == 0],
        )

    def running(self) -> int:
        t = self.tally()
        return t.started - t.completed

    def done(self) -> bool:
        t = self.tally()
        return t.completed == t.sent
