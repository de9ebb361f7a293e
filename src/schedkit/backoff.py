"""One retry policy for every loop that waits out a failure: exponential backoff with a cap,
reset by a success, and optionally a time after which to give up."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Waits of ``first`` seconds, times ``factor`` after each failure, at most ``cap``.

    ``give_up_after`` (seconds since the first failure of a run of failures; None: never)
    makes :attr:`expired` true once that long has passed without a success.
    """

    first: float = 0.5
    factor: float = 2.0
    cap: float = 10.0
    give_up_after: float | None = None
    clock: Callable[[], float] = time.monotonic
    _next: float = field(init=False, default=0.0)
    _failing_since: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._next = self.first

    def failed(self) -> float:
        """Record a failure; return how long to wait before the next try."""
        if self._failing_since is None:
            self._failing_since = self.clock()
        wait = self._next
        self._next = min(self._next * self.factor, self.cap)
        if self.give_up_after is not None:
            wait = max(0.0, min(wait, self.remaining))
        return wait

    def succeeded(self) -> None:
        """Record a success: the next failure waits ``first`` again."""
        self._next = self.first
        self._failing_since = None

    @property
    def remaining(self) -> float:
        """Seconds left before giving up (infinite without ``give_up_after``)."""
        if self.give_up_after is None:
            return float("inf")
        if self._failing_since is None:
            return self.give_up_after
        return self.give_up_after - (self.clock() - self._failing_since)

    @property
    def expired(self) -> bool:
        """True once ``give_up_after`` seconds of failures have passed with no success."""
        return self.remaining <= 0
