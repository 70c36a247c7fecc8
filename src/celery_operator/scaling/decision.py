"""The built-in scaler's decision (pure): how many workers for this many waiting tasks.

- Up at once: ceil(waiting / targetPerReplica), clamped to [minReplicas, maxReplicas].
- From zero only when more than `activation` tasks wait.
- Down only to the highest recommendation of the last `cooldownSeconds` (stabilization,
  as an HPA does on the way down), so a queue that empties for a moment does not shed
  workers, and a pool reaches zero only after its queues stayed empty that long.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Policy:
    min_replicas: int
    max_replicas: int
    target_per_replica: int
    activation: int = 0
    cooldown_seconds: float = 300.0


@dataclass(frozen=True)
class History:
    """Recommendations of the last cooldown window, oldest first: (time, replicas)."""

    recommendations: tuple[tuple[float, int], ...] = field(default_factory=tuple)

    def within(self, now: float, window: float) -> History:
        return History(tuple(r for r in self.recommendations if now - r[0] <= window))

    def add(self, now: float, replicas: int) -> History:
        return History((*self.recommendations, (now, replicas)))


def recommend(waiting: int, current: int, p: Policy) -> int:
    """What this one observation asks for, before stabilization."""
    if waiting <= 0:
        return p.min_replicas
    if current == 0 and waiting <= p.activation and p.min_replicas == 0:
        return 0  # asleep, and not enough waiting to wake up
    wanted = math.ceil(waiting / p.target_per_replica)
    return max(p.min_replicas, min(p.max_replicas, max(wanted, 1)))


def decide(
    waiting: int, current: int, p: Policy, history: History, now: float
) -> tuple[int, History]:
    """Desired replicas for `waiting` tasks, and the history to keep for next time."""
    rec = recommend(waiting, current, p)
    history = history.within(now, p.cooldown_seconds).add(now, rec)
    if rec >= current:
        desired = rec  # up (or steady) without delay
    else:
        desired = max(r for _, r in history.recommendations)  # down: the window's highest
        desired = min(desired, current)
    return max(p.min_replicas, min(p.max_replicas, desired)), history


def total_waiting(lengths: Sequence[int]) -> int:
    return sum(max(0, n) for n in lengths)
