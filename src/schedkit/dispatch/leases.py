"""Which partitions of the store a dispatcher serves: leases, no leader.

With P > 1 partitions every dispatcher holds a lease per partition it serves (``SET NX PX``
on the partition's lease key, renewed well within the lease) and keeps its membership in a
sorted set of dispatchers scored by when it lapses. With D live dispatchers each aims at
P // D partitions, the first P % D of them (by id) at one more: it gives back leases above
its share and takes free ones below it, so the shares add up to P and every partition is
served. A dead dispatcher's leases and
membership lapse after one lease; the others then take its partitions at their next look.
Two dispatchers never hand off one task whatever the leases say: a claim is atomic in its
partition (claim.lua), so a lease only spreads the work.

With one partition every dispatcher serves it, as before partitions existed.
"""

from __future__ import annotations

import logging
import uuid
import zlib
from collections.abc import Callable
from datetime import datetime

from schedkit.model import to_millis, utc_now
from schedkit.store.connect import store_errors
from schedkit.store.store import Store

log = logging.getLogger(__name__)

# Single-key scripts: the lease is changed only by its holder.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: A lease is renewed (and free partitions looked for) this many times per lease at least,
#: and at least every LOOK_EVERY seconds: a dispatcher that joins gets its share within a
#: couple of looks, and a dead one's partitions are taken a look after its leases lapse.
LOOKS_PER_LEASE = 4
LOOK_EVERY = 1.0
LOOK_EVERY_MS = int(LOOK_EVERY * 1000)


class PartitionLeases:
    """The partitions one dispatcher serves now."""

    def __init__(
        self,
        store: Store,
        lease_seconds: float,
        *,
        owner: str = "",
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.lease_ms = max(100, int(lease_seconds * 1000))
        self.owner = owner or uuid.uuid4().hex
        self.clock = clock
        self.held: set[int] = set()
        self._next_look = 0
        self._renew = store.redis.register_script(_RENEW)
        self._release = store.redis.register_script(_RELEASE)
        # Where this dispatcher starts looking for free partitions: spread, so that
        # dispatchers starting together do not all try the same ones first.
        self._offset = zlib.crc32(self.owner.encode()) % max(1, store.partitions)

    def current(self) -> list[int]:
        """The partitions to serve this round (looked at again when due)."""
        if self.store.partitions == 1:
            return [0]
        now = to_millis(self.clock())
        if now >= self._next_look:
            self._next_look = now + min(self.lease_ms // LOOKS_PER_LEASE, LOOK_EVERY_MS)
            self.look(now)
        return sorted(self.held)

    def look(self, now: int) -> None:
        """Renew the leases held, give back those above the share, take free ones below it."""
        store = self.store
        members = store.keys.dispatchers
        with store_errors():
            pipe = store.redis.pipeline(transaction=False)
            pipe.zadd(members, {self.owner: now + self.lease_ms})
            pipe.zremrangebyscore(members, "-inf", now)
            pipe.zrange(members, 0, -1)
            live = sorted(str(member) for member in pipe.execute()[-1])
            share = self.share(live)
            for partition in sorted(self.held):
                key = store.parts[partition].lease
                if not self._renew(keys=[key], args=[self.owner, self.lease_ms]):
                    self.held.discard(partition)  # it lapsed and another took it
            while len(self.held) > share:
                partition = max(self.held)
                self._release(keys=[store.parts[partition].lease], args=[self.owner])
                self.held.discard(partition)
            for step in range(store.partitions):
                if len(self.held) >= share:
                    break
                partition = (self._offset + step) % store.partitions
                if partition in self.held:
                    continue
                key = store.parts[partition].lease
                if store.redis.set(key, self.owner, nx=True, px=self.lease_ms):
                    self.held.add(partition)
        log.debug(
            "dispatcher %s serves partitions %s of %d (%d dispatchers)",
            self.owner,
            sorted(self.held),
            store.partitions,
            len(live),
        )

    def share(self, live: list[str]) -> int:
        """How many partitions this dispatcher should serve among the ``live`` ones (their
        ids, sorted): P // D each, and one more for the first P % D of them, so the shares
        add up to P exactly."""
        count = max(1, len(live))
        rank = live.index(self.owner) if self.owner in live else 0
        base, extra = divmod(self.store.partitions, count)
        return base + (1 if rank < extra else 0)

    def release_all(self) -> None:
        """Give every lease back (on a clean stop), so others take them at once."""
        if self.store.partitions == 1:
            return
        with store_errors():
            for partition in sorted(self.held):
                self._release(keys=[self.store.parts[partition].lease], args=[self.owner])
            self.store.redis.zrem(self.store.keys.dispatchers, self.owner)
        self.held.clear()
