"""Run an iterator in a thread of its own, a bounded number of items ahead of its consumer.

A ScheduleTasks stream reads, converts and checks a batch (Python work) and then waits for
the store (Redis work). Producing the next batch while the consumer waits on the store keeps
both busy instead of taking turns.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_POLL = 0.1  # how often a blocked producer checks that its consumer is still there


class _End:
    """The producer's last item: the iterator ended, or raised ``error``."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class ReadAhead(Generic[T]):
    """``for item in ReadAhead(items, depth=2)`` yields ``items`` in order, each produced up to
    ``depth`` items before it is needed. An exception of ``items`` is raised in its place.
    Leaving the loop early (or :meth:`close`) stops the producer at its next item.
    """

    def __init__(self, items: Iterator[T], *, depth: int = 2, name: str = "read-ahead") -> None:
        self._items = items
        self._queue: queue.Queue[T | _End] = queue.Queue(maxsize=depth)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(_End(exc))
        else:
            self._put(_End())

    def _put(self, item: T | _End) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
            except queue.Full:
                continue
            return True
        return False

    def __iter__(self) -> Iterator[T]:
        try:
            while True:
                item = self._queue.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            self.close()

    def close(self) -> None:
        """Stop producing; an item being produced is finished and dropped."""
        self._stopped.set()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the producer to end; True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()
