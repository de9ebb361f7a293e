"""The dispatcher: claims tasks entering the hand-off window and hands them to Celery.

Each round claims atomically under a lease (several dispatchers may share a store), publishes
what ``apply_async(eta=run time, task_id=schedkit id)`` would, many messages per broker round
trip (``schedkit.dispatch.publish``), then settles the claims: QUEUED for what
the broker took, FAILED for a message the broker refused itself (``message_refusal``), and
due-again for the rest of a round the broker could not take. A dispatcher that dies mid-round leaves
claims whose lease lapses; the next round anywhere returns them to the due index. A
message the broker accepted and then lost leaves its task QUEUED and never started; after the
visibility timeout the dispatcher hands it off again (``redeliver_if_due``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import redis
from celery import Celery
from celery.exceptions import QueueNotFound
from kombu.exceptions import EncodeError, OperationalError

from schedkit.backoff import Backoff
from schedkit.dispatch.broker import Broker
from schedkit.dispatch.leases import LOOK_EVERY, PartitionLeases
from schedkit.dispatch.materialize import Materializer
from schedkit.dispatch.publish import Publisher
from schedkit.errors import Unavailable
from schedkit.model import utc_now
from schedkit.settings import Settings
from schedkit.store.claimed import Claims
from schedkit.store.store import Store

log = logging.getLogger(__name__)

PURGE_EVERY = timedelta(minutes=1)
#: Longest wait between rounds while due tasks wait for room under ``max_in_flight`` (a start
#: that makes room for a tenth of the bound wakes the dispatcher before).
HELD_BACK_WAIT = 0.05


class Dispatcher:
    """Moves due tasks from the store to the Celery broker."""

    def __init__(
        self,
        store: Store,
        app: Celery,
        settings: Settings,
        *,
        broker: Broker | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.store = store
        self.app = app
        self.settings = settings
        # An explicit broker connection: the app object may be shared (tests, embedding) and
        # its own pool may already point elsewhere.
        self.broker = broker or Broker.for_settings(app, settings)
        self.publisher = Publisher(app, self.broker)
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_purge = clock()
        self._next_redeliver = clock()
        self.materializer = Materializer(store, settings, clock=clock)
        #: Due tasks the last round left in the store for want of room in their queue.
        self.held_back = 0
        #: The store partitions this dispatcher serves (all of one; leased among many).
        self.leases = PartitionLeases(store, settings.claim_lease, clock=clock)
        #: Tasks (id: partition claimed from) the last overlapped round handed off and has
        #: not marked QUEUED yet.
        self._held: dict[str, int] = {}
        #: The next round's claim, sent while the last round was built (its replies unread).
        self._ahead: Callable[[], Claims] | None = None

    def run_once(self, *, overlap: bool = False) -> int:
        """One round: claim, hand off, settle. Returns how many tasks the broker took.

        With ``overlap`` (the loop's rounds), a full round overlaps its neighbours in Redis:
        its QUEUED marks are held and sent after the next round's claim, while that round's
        messages are built, and the next round's claim is sent before this round's
        messages are built and read after they are published. :meth:`settle_held` writes
        the marks at once and gives back a claim taken ahead.
        """
        partitions = self.leases.current()
        self.held_back = 0
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            # Claimed while the last round was published (on the partitions served then,
            # under their lease): confirmed (replicas too) before any of it is handed off.
            claimed = ahead()
        elif not partitions:
            self.settle_held()
            return 0
        else:
            claimed = self.store.claim(**self._claim_args(partitions))
        self.held_back = claimed.held_back
        held, self._held = self._held, {}
        answered = self.store.mark_queued_later(list(held), where=held) if held else None
        try:
            if (
                overlap
                and partitions
                and len(claimed) >= self.settings.claim_batch
                and not claimed.held_back
            ):
                # More is due and has room: Redis claims it while this round is published.
                self._claim_ahead(partitions)
            return self._hand_off(claimed, overlap=overlap)
        finally:
            if answered is not None:
                answered()

    def _claim_args(self, partitions: Sequence[int]) -> dict[str, Any]:
        return {
            "window_seconds": self.settings.handoff_window,
            "lease_seconds": self.settings.claim_lease,
            "limit": self.settings.claim_batch,
            "max_in_flight": self.settings.max_in_flight,
            "now": self.clock(),
            "partitions": partitions,
        }

    def _claim_ahead(self, partitions: Sequence[int]) -> None:
        try:
            self._ahead = self.store.claim_later(**self._claim_args(partitions))
        except Unavailable as exc:
            # Only a head start lost: the next round claims as usual.
            log.warning("could not claim the next round ahead: %s", exc)

    def settle_held(self) -> None:
        """Mark QUEUED what the last overlapped round handed off, and give back a claim
        taken ahead for a round that will not come (the broker failed, the loop ends)."""
        held, self._held = self._held, {}
        try:
            if held:
                self.store.mark_queued(list(held), now=self.clock(), where=held)
        finally:
            self._give_back_ahead()

    def _give_back_ahead(self) -> None:
        """Release the claim taken ahead, if any: due again at once."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            claimed = ahead()
            where = {t.id: t.partition for t in claimed}
            self.store.release(list(where), now=self.clock(), where=where)

    def _hand_off(self, claimed: Claims, *, overlap: bool) -> int:
        if not claimed:
            return 0
        outcome = self.publisher.publish(claimed, message_refusal)
        handed = [t.id for t, r in zip(claimed, outcome.reasons, strict=False) if r is None]
        refused = [
            (t.id, r) for t, r in zip(claimed, outcome.reasons, strict=False) if r is not None
        ]
        for task_id, reason in refused:
            log.error(
                "the broker refused the message of task %s: %s",
                task_id,
                reason,
                extra={"task_id": task_id},
            )
        if outcome.error is not None or refused:
            # OperationalError and OSError are the broker being away; kombu also raises
            # AttributeError from a channel whose connection broke. Either way the rest of
            # the claims are released below and the next round uses a fresh connection; a
            # refused message may have left the channel broken too.
            if outcome.error is not None:
                exc = outcome.error
                log.warning(
                    "broker refused hand-off after %d of %d tasks: %s",
                    outcome.settled,
                    len(claimed),
                    exc,
                    exc_info=not isinstance(exc, OperationalError | OSError),
                    extra={"released": len(claimed) - outcome.settled},
                )
            self.broker.reset()
            self.publisher.reset()
        now = self.clock()
        where = {t.id: t.partition for t in claimed}  # settled where each was claimed
        if overlap and len(handed) == len(claimed) >= self.settings.claim_batch:
            # More is due: settled while the next round is built.
            self._held = {task_id: where[task_id] for task_id in handed}
        else:
            self.store.mark_queued(handed, now=now, where=where)
        self.store.fail_refused(refused, now=now, where=where)
        self.store.release([t.id for t in claimed[outcome.settled :]], now=now, where=where)
        if log.isEnabledFor(logging.DEBUG):  # a line per task: only when asked for
            for task, verdict in zip(claimed, outcome.reasons, strict=False):
                if verdict is None:
                    log.debug(
                        "handed off",
                        extra={"task_id": task.id, "task": task.task, "eta": task.run_at},
                    )
        if handed:
            log.info("handed off %d tasks", len(handed), extra={"handed": len(handed)})
        return len(handed)

    def seconds_until_work(self) -> float:
        """How long to wait before the next task enters the window (capped at poll_interval)."""
        poll = self.settings.poll_interval
        partitions = self.leases.current()
        if not partitions:
            return poll
        first = self.store.next_run_at(partitions)
        if first is None:
            return poll
        enters = first - timedelta(seconds=self.settings.handoff_window)
        return max(0.0, min(poll, (enters - self.clock()).total_seconds()))

    def purge_if_due(self) -> int:
        """Forget finished tasks past their retention, about once a minute."""
        now = self.clock()
        if now < self._next_purge:
            return 0
        self._next_purge = now + PURGE_EVERY
        return self.store.purge(
            finished_before=now - timedelta(seconds=self.settings.retention),
            partitions=self.leases.current(),
        )

    def redeliver_if_due(self) -> int:
        """Hand off again what never started, checked every half visibility timeout (at most
        a minute): a task still QUEUED a visibility timeout after both its hand-off and its
        run time was lost by the broker, or held by a worker that died (the worker keeps
        hand-offs out of kombu's unacked record: dispatch/transport.py)."""
        now = self.clock()
        if now < self._next_redeliver:
            return 0
        stale = self.settings.visibility_timeout
        self._next_redeliver = now + min(PURGE_EVERY, timedelta(seconds=max(1.0, stale / 2)))
        lost = self.store.redeliver(stale_seconds=stale, now=now, partitions=self.leases.current())
        if lost:
            log.warning(
                "%d tasks were handed off %.0fs ago and no worker started them: handing off "
                "again (a worker runs one copy at most)",
                len(lost),
                stale,
                extra={"redelivered": len(lost)},
            )
        return len(lost)

    def run(self) -> None:
        """Loop until :meth:`stop`: hand off, then sleep until work is due or nudged."""
        backoff = Backoff()  # 0.5 s, doubling up to 10 s, until a round goes through
        while not self._stop.is_set():
            try:
                # Schedules' runs become parked tasks, in the partitions this one serves.
                self.materializer.run_guarded(self.leases.current())
                handed = self.run_once(overlap=True)
                if handed < self.settings.claim_batch:
                    self.settle_held()
                self.purge_if_due()
                if self.redeliver_if_due():
                    continue  # they are due now
                backoff.succeeded()
                if handed >= self.settings.claim_batch:
                    continue
                self._wait(HELD_BACK_WAIT if self.held_back else self.seconds_until_work())
            except Exception as exc:
                # The loop must outlive any one bad round: a dead dispatcher hands off nothing.
                # A claim taken ahead is not kept through the wait (its lease could lapse and
                # another dispatcher take it): given back now, or left to lapse if Redis is away.
                with contextlib.suppress(Exception):
                    self._give_back_ahead()
                wait = backoff.failed()
                if isinstance(exc, Unavailable):
                    log.warning("store unavailable, retrying in %.1fs: %s", wait, exc)
                else:
                    log.exception("dispatcher round failed, retrying in %.1fs", wait)
                self._stop.wait(wait)  # stop() ends the wait at once
        with contextlib.suppress(Exception):  # unsettled claims lapse and go out again
            self.settle_held()

    def _wait(self, seconds: float) -> None:
        """Sleep until a nudge in a partition served, or ``seconds``. With work held back for
        room (a short wait), a start that brings its queue a tenth below the bound nudges the
        wake list; look again soon in any case. Serving no partition (more dispatchers than
        partitions), look for a free one at every look (``schedkit.dispatch.leases``)."""
        partitions = self.leases.current()
        if partitions:
            self.store.wait_for_work(seconds, partitions)
        else:
            self._stop.wait(min(seconds, LOOK_EVERY))

    def start(self) -> Dispatcher:
        """Run the loop in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="schedkit-dispatcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to end and wait for it."""
        self._stop.set()
        if self._thread is not None:
            with contextlib.suppress(Unavailable):
                self.store.nudge()
            self._thread.join(timeout)
            self._thread = None
        with contextlib.suppress(Unavailable):
            self.leases.release_all()


#: Longest reason kept in a refused task's error field.
_MAX_REASON = 500


def message_refusal(exc: BaseException) -> str | None:
    """Why the broker refused one message itself, or None when the error may concern the
    broker as a whole (away, full, read-only, unknown), which must never fail a task.

    Only errors known to be about this message count: a Redis queue key that is not a list
    (WRONGTYPE), a message larger than Redis takes, a message that cannot be encoded, a queue
    the app cannot route to. kombu wraps the Redis error in an OperationalError, so the
    causes are read too.
    """
    seen = 0
    link: BaseException | None = exc
    while link is not None and seen < 8:
        if isinstance(link, redis.ResponseError) and _is_message_error(str(link)):
            return f"the broker refused the message: {str(link)[:_MAX_REASON]}"
        if isinstance(link, EncodeError | QueueNotFound):
            return f"the message could not be sent: {type(link).__name__}: {link}"[:_MAX_REASON]
        link = link.__cause__ or link.__context__
        seen += 1
    return None


def _is_message_error(text: str) -> bool:
    """True for Redis replies about the key or value of one command, not the server."""
    # A pipeline's error reads "Command # 1 (LLEN q) of pipeline caused error: WRONGTYPE …".
    reply = text.rpartition("caused error: ")[2]
    return reply.startswith("WRONGTYPE") or "exceeds maximum allowed size" in reply
