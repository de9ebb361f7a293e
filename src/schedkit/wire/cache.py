"""Caches bounded by the bytes they hold, not by how many entries they have.

Column templates arrive from callers: a bound on entries alone lets a few large ones (or many
small ones) hold any amount of memory, so each entry is charged an estimate of its size and
the least recently used ones go once the budget is spent.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Generic, TypeVar

from schedkit.model import TaskSpec

if TYPE_CHECKING:
    from schedkit.settings import Settings

K = TypeVar("K")
V = TypeVar("V")

#: What one entry costs beyond the bytes it is charged for: the dict slot, the key and value
#: objects, a dataclass or tuple.
ENTRY_OVERHEAD = 512
#: A converted template holds Python objects for what its wire bytes encode: a number of
#: 9 wire bytes becomes a 32-byte float or int plus a list slot. Charging four times the wire
#: bytes (and the wire bytes themselves, the key) keeps the estimate above what is held.
SPEC_BYTES_PER_WIRE_BYTE = 4
#: The default budget of converted templates: a timetable has a few thousand distinct ones of
#: a few hundred bytes each.
DEFAULT_TEMPLATE_CACHE_BYTES = 8 * 1024 * 1024
#: How many wire bytes a template may take per byte of args and kwargs JSON: a Struct spends
#: up to 11 bytes on a number JSON writes in 2 ("1,"), a string's UTF-8 up to 4 per character.
WIRE_BYTES_PER_JSON_BYTE = 6
#: Wire bytes allowed for the rest of a template: task name, queue, priority, expiry and up to
#: 64 labels of 63 + 256 characters.
TEMPLATE_OTHER_FIELDS_BYTES = 256 * 1024
#: Settings' defaults (max_args_bytes, max_batch), for caches made without settings.
DEFAULT_MAX_ARGS_BYTES = 65536
DEFAULT_MAX_BATCH = 5000


class ByteBoundedLRU(Generic[K, V]):
    """A thread-safe LRU mapping whose entries' charged bytes stay within ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        # Streams prepare batches in threads of their own and share one cache.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def charged_bytes(self) -> int:
        """The bytes charged for what is held now."""
        return self._bytes

    def get(self, key: K) -> V | None:
        """The value kept under ``key`` (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: K, value: V, cost: int) -> None:
        """Keep ``value`` under ``key``, charged ``cost`` bytes; what does not fit is not kept."""
        if cost > self.max_bytes:
            return  # would evict everything and still not fit
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= previous[1]
            while self._entries and self._bytes + cost > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted
            self._entries[key] = (value, cost)
            self._bytes += cost

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0


class TemplateCache:
    """Column templates already converted and checked, by their deterministic wire bytes.

    ``TemplateCache(max_bytes=DEFAULT_TEMPLATE_CACHE_BYTES, max_args_bytes=65536,
    max_batch=5000)``: ``max_bytes`` is the memory budget (0 keeps nothing); ``max_args_bytes``
    and ``max_batch`` are the server's settings of those names, from which come the limits
    checked before a template is converted: its wire size (:attr:`max_template_bytes`) and
    how many one batch may carry. :meth:`for_settings` builds one from ``Settings``.
    """

    def __init__(
        self,
        max_bytes: int = DEFAULT_TEMPLATE_CACHE_BYTES,
        *,
        max_args_bytes: int = DEFAULT_MAX_ARGS_BYTES,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        self._specs: ByteBoundedLRU[bytes, TaskSpec] = ByteBoundedLRU(max_bytes)
        # Past this a template's args and kwargs cannot fit max_args_bytes as JSON, whatever
        # it holds: refused unread.
        self.max_template_bytes = (
            WIRE_BYTES_PER_JSON_BYTE * max_args_bytes + TEMPLATE_OTHER_FIELDS_BYTES
        )
        self.max_templates = max_batch

    @classmethod
    def for_settings(cls, settings: Settings) -> TemplateCache:
        """A cache with the default budget and the limits of ``settings``."""
        return cls(max_args_bytes=settings.max_args_bytes, max_batch=settings.max_batch)

    def __len__(self) -> int:
        return len(self._specs)

    @property
    def charged_bytes(self) -> int:
        """The bytes charged for the templates held now."""
        return self._specs.charged_bytes

    def get(self, wire: bytes) -> TaskSpec | None:
        """The spec of a template seen and checked before, or None."""
        return self._specs.get(wire)

    def put(self, wire: bytes, spec: TaskSpec) -> None:
        """Keep a template that passed every check, charged by its wire size."""
        cost = (1 + SPEC_BYTES_PER_WIRE_BYTE) * len(wire) + ENTRY_OVERHEAD
        self._specs.put(wire, spec, cost)
