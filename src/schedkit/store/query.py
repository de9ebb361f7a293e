"""What ListTasks and WatchTasks select."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schedkit.model import TaskRecord, TaskState


@dataclass(frozen=True)
class TaskQuery:
    """What ListTasks and WatchTasks select; empty fields match everything."""

    states: frozenset[TaskState] = frozenset()
    task: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    run_after: datetime | None = None
    run_before: datetime | None = None
    ids: frozenset[str] = frozenset()

    def matches(self, record: TaskRecord) -> bool:
        """True when ``record`` passes every set field."""
        spec = record.spec
        return (
            (not self.states or record.state in self.states)
            and (not self.task or spec.task == self.task)
            and all(spec.labels.get(k) == v for k, v in self.labels)
            and (self.run_after is None or spec.run_at >= self.run_after)
            and (self.run_before is None or spec.run_at < self.run_before)
            and (not self.ids or record.id in self.ids)
        )
