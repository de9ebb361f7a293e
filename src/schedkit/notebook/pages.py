"""Server-side paging for the inspector: the grid shows one page; ListTasks' page tokens reach
every other one, so the browser (and the kernel) never holds all matching tasks.

ListTasks pages by run time, and with a task or label filter a server page may hold fewer
tasks than asked while more follow, so one grid page is filled from as many calls as it
takes. The token at the start of each grid page is remembered, so going back, or to a page
already passed, is one call; :meth:`Pager.count` walks the whole listing once (tasks are
counted, not kept) and learns every page's token on the way, so "last page" is one call too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from schedkit.client.client import Client
from schedkit.model import TaskRecord

#: The most tasks one grid page holds (and ListTasks' own ceiling per call).
MAX_PAGE_SIZE = 1000


@dataclass
class Pager:
    """Pages of ``page_size`` tasks matching ``filters`` (keyword arguments of
    :meth:`schedkit.Client.tasks_page`)."""

    client: Client
    page_size: int = 200
    filters: Mapping[str, Any] = field(default_factory=dict)
    #: The token that starts each grid page known so far, by page number; page 0 starts at ''.
    starts: dict[int, str] = field(default_factory=lambda: {0: ""})
    #: How many grid pages there are, once the end has been seen (None: not yet).
    pages: int | None = None
    #: How many tasks match, once counted (None: not yet).
    total: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1 to {MAX_PAGE_SIZE}")

    def reset(self, filters: Mapping[str, Any], page_size: int | None = None) -> None:
        """New filters (or page size): what was learnt about pages no longer holds."""
        self.filters = dict(filters)
        if page_size is not None:
            self.page_size = page_size
            self.__post_init__()
        self.starts, self.pages, self.total = {0: ""}, None, None

    def adopt(self, other: Pager) -> None:
        """Take what ``other`` (a count over the same filters and page size) learnt."""
        self.starts.update(other.starts)
        self.pages, self.total = other.pages, other.total

    def page(self, number: int) -> tuple[list[TaskRecord], int]:
        """The tasks of grid page ``number`` (from 0; past the end: the last page), and the
        number of the page returned."""
        number = max(0, number if self.pages is None else min(number, self.pages - 1))
        known = max(n for n in self.starts if n <= number)
        token = self.starts[known]
        while True:
            tasks, token = self._fill(token, self.page_size)
            if token:
                self.starts[known + 1] = token
            else:
                self.pages = known + 1
                if not tasks and known > 0:  # the last page ended exactly on a boundary
                    self.pages = known
                    return self.page(known - 1)
            if known == number or not token:
                return tasks, known
            known += 1

    def count(self, stop: Callable[[], bool] = lambda: False) -> int | None:
        """Walk every matching task once, counting (in calls of up to 1,000); learn the
        start of every few pages on the way. None if ``stop()`` said to give up first."""
        pages_per_call = max(1, MAX_PAGE_SIZE // self.page_size)
        counted, token, number = 0, "", 0
        while True:
            if stop():
                return None
            tasks, token = self._fill(token, self.page_size * pages_per_call)
            counted += len(tasks)
            number += pages_per_call
            if token:
                self.starts[number] = token
            else:
                self.total = counted
                self.pages = max(-(-counted // self.page_size), 1)
                return counted

    def _fill(self, token: str, size: int) -> tuple[list[TaskRecord], str]:
        """``size`` tasks from ``token``: calls until that many or the end."""
        tasks: list[TaskRecord] = []
        while True:
            found, token = self.client.tasks_page(
                **self.filters,
                page_size=min(size - len(tasks), MAX_PAGE_SIZE),
                page_token=token,
            )
            tasks += found
            if len(tasks) >= size or not token:
                return tasks, token
