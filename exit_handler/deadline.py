"""One overall deadline (`--timeout`) shared by every step, and backoff inside it.

GCS and NATS retries both draw on the same clock, so the handler answers exit 3 at the
deadline, not at the sum of each client's own timeouts.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator


class Deadline:
    """A point on the monotonic clock that every wait and retry stays inside."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def cap(self, seconds: float) -> float:
        """A per-attempt timeout that never outlives the deadline."""
        return max(0.001, min(seconds, self.remaining()))


def backoff(deadline: Deadline, *, first: float = 0.1, ceiling: float = 2.0) -> Iterator[float]:
    """Delays before each retry: exponential with full jitter, cut to the deadline.

    Stops when no time is left, so `for delay in backoff(d)` ends at the deadline.
    """
    step = first
    while not deadline.expired():
        yield min(random.uniform(step / 2, step), deadline.remaining())
        step = min(step * 2, ceiling)
