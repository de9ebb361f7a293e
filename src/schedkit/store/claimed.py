"""What a dispatcher's claim returns: the claimed tasks, with what apply_async needs, and
how many due tasks were held back; and how much one claim script call may take."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

#: Most tasks one claim script call takes, and most due entries it reads: a call over a
#: burst of any size stays a few milliseconds long.
CLAIM_SLICE = 100
CLAIM_SCAN = 4 * CLAIM_SLICE


class Claimed:
    """A task claimed for hand-off, with what apply_async needs.

    A claim read from the store keeps the JSON text its args and kwargs are stored as
    (``args_json``, ``kwargs_json``; "" for none) and decodes it on first use of ``args`` or
    ``kwargs``: the publisher splices common shapes into the message without decoding
    (``schedkit.dispatch.publish``). Built from values, the texts are None.
    """

    __slots__ = (
        "_args",
        "_kwargs",
        "args_json",
        "id",
        "kwargs_json",
        "partition",
        "priority",
        "queue",
        "run_at",
        "task",
    )

    def __init__(
        self,
        id: str,
        task: str,
        args: list[Any] | None,
        kwargs: dict[str, Any] | None,
        run_at: datetime,
        queue: str,
        priority: int | None,
        partition: int = 0,
        *,
        args_json: str | None = None,
        kwargs_json: str | None = None,
    ) -> None:
        self.id = id
        self.task = task
        self._args = args
        self._kwargs = kwargs
        self.run_at = run_at
        self.queue = queue
        self.priority = priority
        #: The store partition it was claimed from: its claim is settled there.
        self.partition = partition
        self.args_json = args_json
        self.kwargs_json = kwargs_json

    @property
    def args(self) -> list[Any]:
        """The positional arguments (decoded from the stored text on first use)."""
        if self._args is None:
            self._args = json.loads(self.args_json) if self.args_json else []
        return self._args

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments (decoded from the stored text on first use)."""
        if self._kwargs is None:
            self._kwargs = json.loads(self.kwargs_json) if self.kwargs_json else {}
        return self._kwargs

    def _key(self) -> tuple[Any, ...]:
        return (
            self.id,
            self.task,
            self.args,
            self.kwargs,
            self.run_at,
            self.queue,
            self.priority,
            self.partition,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Claimed):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable caches: compared, not hashed

    def __repr__(self) -> str:
        return (
            f"Claimed(id={self.id!r}, task={self.task!r}, args={self.args!r}, "
            f"kwargs={self.kwargs!r}, run_at={self.run_at!r}, queue={self.queue!r}, "
            f"priority={self.priority!r}, partition={self.partition})"
        )


class Claims(list[Claimed]):
    """Claimed tasks; ``held_back`` counts due tasks the last call left for want of room in
    their queue (its in-flight bound)."""

    held_back: int = 0
