"""Reading queue lengths from the broker, for the built-in scaler.

The scaler asks a `Probe`; in the operator that is the broker's monitor (`monitor.py`),
whose one kombu connection reads queue sizes through kombu's own transport code (key
prefixes, priority steps). Nothing here logs a URL with its password: errors carry
`BrokerURL.redacted()` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class BrokerUnreachableError(Exception):
    """The broker could not be asked; the message carries no credentials."""


class Probe(Protocol):
    def queue_lengths(self, queues: Sequence[str]) -> list[int]: ...
    def close(self) -> None: ...
