"""Batched hand-off: many Celery messages per broker round trip, each built from a template.

``apply_async`` costs about half a millisecond per task, most of it one broker round trip and
rebuilding the same headers, route and properties for every message. Tasks that share a task
name, queue and priority share all of that, so a :class:`Publisher` asks Celery once per such
*template* what ``apply_async`` would publish (Celery's own ``send_task`` runs against a
producer that records the call instead of sending it), then varies only what differs per
task: the id (``id``, ``root_id``, ``correlation_id``), the ``eta``, the arguments and their
``argsrepr``/``kwargsrepr``. Messages are JSON (protocol 2), never pickle.

How a batch reaches the broker depends on the transport:

- Redis: kombu's channel prepares each template's message as its ``basic_publish`` would
  (body encoding, delivery tag, delivery info, priority queue name); each task's message is
  that text with its own values, and a batch goes out as one ``LPUSH`` per queue list, all in
  one pipeline; a reply says whether that list took its messages.
- AMQP (py-amqp): the channel is put in publisher-confirm mode once; a batch is published
  without waiting, then the confirms of the whole batch are awaited together.
- Anything else, or a route through a named exchange: one ``producer.publish`` per message,
  as ``apply_async`` does.

Celery's ``before_task_publish``/``after_task_publish`` signals fire once per template (with
the template's first task), not once per message; headers a ``before_task_publish`` handler
adds are kept in every message built from that template. ``task_routes`` functions are asked
once per template, with its first task's arguments.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from binascii import b2a_base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from json.encoder import encode_basestring_ascii as quote
from operator import itemgetter
from typing import Any

from celery import Celery
from celery.utils.saferepr import saferepr
from kombu.utils.json import dumps as json_dumps

from schedkit.dispatch.broker import Broker
from schedkit.dispatch.transport import HANDOFF_TAG_PREFIX
from schedkit.store.claimed import Claimed

log = logging.getLogger(__name__)

#: Messages per pipeline or per wait for confirms: bounds what one failure leaves uncertain.
PUBLISH_CHUNK = 1000
#: Seconds to wait for the publisher confirms of one chunk before treating it as not taken.
CONFIRM_TIMEOUT = 30.0
#: The id and eta a template is captured with before each message gets its own.
_PLACEHOLDER_ID = "schedkit-template"


@dataclass
class Outcome:
    """What became of each task of a batch, by position: None taken, else the reason the
    broker refused that message itself. ``error`` is set when the broker as a whole failed;
    tasks from ``settled`` on were then not (or not surely) taken."""

    reasons: list[str | None] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def settled(self) -> int:
        """How many tasks, from the first, have a verdict."""
        return len(self.reasons)


class _Capture:
    """Stands in for a kombu Producer while Celery's ``send_task`` builds one message."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.call: tuple[Any, dict[str, Any]] | None = None

    def publish(self, body: Any, **kwargs: Any) -> None:
        self.call = (body, kwargs)


@dataclass
class Template:
    """What ``apply_async`` would publish for one (task, queue, priority), as kombu's
    ``Producer.publish`` receives it."""

    publish_kwargs: dict[str, Any]
    embed: dict[str, Any]
    argsrepr_size: int
    kwargsrepr_size: int
    repr_levels: int
    #: The channel this template's queue was last declared on (kombu binds a copy of the
    #: queue on every maybe_declare: too dear per message).
    declared_on: Any = None
    #: The channel on which declaring it failed, and the error, which every later message
    #: of this template on that channel meets too.
    refused_on: Any = None
    refusal: BaseException | None = None
    #: The Redis frame of this template (see ``_RedisBatch``), for one channel.
    frame: _Frame | None = None

    def vary(self, task: Claimed) -> tuple[Any, dict[str, Any]]:
        """The body and publish arguments of ``task``'s own message."""
        kwargs = dict(self.publish_kwargs)
        args = tuple(task.args)
        # Every header that carried the template's id carries this task's (id, root_id, and
        # any a before_task_publish handler copied), as in the Redis frame.
        headers = {
            name: task.id if value == _PLACEHOLDER_ID else value
            for name, value in kwargs["headers"].items()
        }
        headers["eta"] = _eta(task.run_at)
        headers["argsrepr"] = _repr(args, self.argsrepr_size, self.repr_levels)
        headers["kwargsrepr"] = _repr(task.kwargs, self.kwargsrepr_size, self.repr_levels)
        kwargs["headers"] = headers
        kwargs["correlation_id"] = task.id
        return (args, task.kwargs, self.embed), kwargs


def _plain(value: object) -> bool:
    """True for a value whose repr Celery's saferepr would write the same way."""
    kind = type(value)
    if kind is int or kind is float or kind is bool or value is None:
        return True
    # saferepr writes a string holding quotes, backslashes or control characters its own way.
    if not isinstance(value, str):
        return False
    return value.isprintable() and "'" not in value and "\\" not in value and '"' not in value


def _repr(value: tuple[Any, ...] | dict[str, Any], size: int, levels: int) -> str:
    """``saferepr(value, size)`` as ``apply_async`` writes argsrepr: plain ``repr`` for a flat
    tuple or dict of numbers and plain strings (a tenth of the cost), saferepr otherwise."""
    items = value.values() if isinstance(value, dict) else value
    for item in items:
        if not _plain(item):
            return saferepr(value, size, maxlevels=levels)
    text = repr(value)
    if len(text) < size // 2:
        return text
    return saferepr(value, size, maxlevels=levels)


#: JSON as kombu's ``dumps`` writes it (same separators, ASCII only) for values decoded from
#: JSON, which need none of its encoder's extra types; one encoder, not one per call.
_encode = json.JSONEncoder().encode


class _Tags:
    """Delivery tags (JSON-quoted) for one batch: a random uuid4 with a counter in its last
    12 digits. kombu's Redis channel makes a uuid4 per message (a tenth of a message's
    cost); a tag only has to be unique among the messages the broker holds unacknowledged."""

    def __init__(self) -> None:
        self._head = str(uuid.uuid4())[:24]
        self._count = 0

    def next(self) -> str:
        """The next tag of the batch; the prefix tells the worker's transport the message is a
        hand-off, which the dispatcher hands off again if it never starts (transport.py)."""
        self._count += 1
        return f'"{HANDOFF_TAG_PREFIX}{self._head}{self._count:012x}"'


#: Stored args JSON that is a flat list of integers, as the store writes it (compact): the
#: most common shape, spliced into the message as it stands.
_INTS = re.compile(r"\[(?:(?:0|-?[1-9][0-9]*)(?:,(?:0|-?[1-9][0-9]*))*)?\]")


def _args_parts(task: Claimed, template: Template) -> tuple[str, str]:
    """The JSON text of ``task``'s args as kombu writes it in the body, and their argsrepr.

    Stored args that are a flat list of integers are not decoded: the body has the stored
    text with kombu's separator, the repr the same numbers in a tuple, which is what
    ``saferepr`` writes for such a tuple short of its size bound. Anything else is decoded
    and written as before."""
    stored = task.args_json
    if stored == "":
        return "[]", "()"
    if stored is not None and _INTS.fullmatch(stored):
        text = stored.replace(",", ", ")
        inner = text[1:-1]
        argsrepr = f"({inner})" if "," in inner or not inner else f"({inner},)"
        if len(argsrepr) < template.argsrepr_size // 2:  # as _repr decides
            return text, argsrepr
    args = task.args
    return _encode(args), _repr(tuple(args), template.argsrepr_size, template.repr_levels)


def _eta(run_at: datetime) -> str:
    return run_at.isoformat()


def template_key(task: Claimed) -> tuple[str, str, int | None]:
    """Tasks with the same key share a template."""
    return (task.task, task.queue, task.priority)


class Publisher:
    """Publishes claimed tasks to the broker of ``broker`` in batches."""

    def __init__(self, app: Celery, broker: Broker) -> None:
        self.app = app
        self.broker = broker
        self._templates: dict[tuple[str, str, int | None], Template] = {}
        self._confirms: _Confirms | None = None

    def reset(self) -> None:
        """Forget the confirm state of a channel that failed (the broker handle reconnects)."""
        self._confirms = None

    def template(self, task: Claimed) -> Template:
        """The template of ``task``'s key, captured from Celery's send path on first use."""
        key = template_key(task)
        found = self._templates.get(key)
        if found is None:
            found = self._capture(task)
            if len(self._templates) >= 10_000:  # task names are bounded; queues too
                self._templates.clear()
            self._templates[key] = found
        return found

    def _capture(self, task: Claimed) -> Template:
        options: dict[str, Any] = {"task_id": _PLACEHOLDER_ID, "eta": task.run_at}
        options["serializer"] = "json"
        if task.queue:
            options["queue"] = task.queue
        if task.priority is not None:
            options["priority"] = task.priority
        capture = _Capture(self.broker.connection)
        options["producer"] = capture
        registered = self.app.tasks.get(task.task)
        if registered is not None:
            registered.apply_async(tuple(task.args), task.kwargs, **options)
        else:
            self.app.send_task(task.task, task.args, task.kwargs, **options)
        if capture.call is None:
            raise RuntimeError(f"Celery's send_task published nothing for {task.task!r}")
        body, kwargs = capture.call
        amqp = self.app.amqp
        return Template(
            publish_kwargs=kwargs,
            embed=body[2],
            argsrepr_size=amqp.argsrepr_maxsize,
            kwargsrepr_size=amqp.kwargsrepr_maxsize,
            repr_levels=self.app.conf.task_repr_maxlevels,
        )

    def publish(
        self, tasks: Sequence[Claimed], refusal: Callable[[BaseException], str | None]
    ) -> Outcome:
        """Publish ``tasks`` in order. ``refusal`` tells a message's own refusal (its reason)
        from the broker failing as a whole (None)."""
        outcome = Outcome()
        try:
            with self.broker.producer() as producer:
                for first in range(0, len(tasks), PUBLISH_CHUNK):
                    chunk = tasks[first : first + PUBLISH_CHUNK]
                    outcome.reasons.extend(self._chunk(producer, chunk, refusal))
        except Exception as exc:
            outcome.error = exc
        return outcome

    def _chunk(
        self,
        producer: Any,
        tasks: Sequence[Claimed],
        refusal: Callable[[BaseException], str | None],
    ) -> list[str | None]:
        channel = producer.channel
        if _is_redis(channel):
            return _RedisBatch(self, producer, refusal).send(tasks)
        if _is_amqp(channel):
            if self._confirms is None or self._confirms.channel is not channel:
                self._confirms = _Confirms(channel)
            return self._confirms.send(self, producer, tasks, refusal)
        return [self._one(producer, task, refusal) for task in tasks]

    def _one(
        self, producer: Any, task: Claimed, refusal: Callable[[BaseException], str | None]
    ) -> str | None:
        """Publish one message as apply_async would; the reason if the broker refused it."""
        try:
            body, kwargs = self.template(task).vary(task)
            producer.publish(body, **kwargs)
        except Exception as exc:
            reason = refusal(exc)
            if reason is None:
                raise
            return reason
        return None


def _is_redis(channel: Any) -> bool:
    return hasattr(channel, "_q_for_pri") and hasattr(channel, "_inplace_augment_message")


def _is_amqp(channel: Any) -> bool:
    return hasattr(channel, "confirm_select") and hasattr(channel, "events")


#: Marks the per-message values in a frame's JSON text; ``_frame`` splits the text on them.
_MARK = "@@schedkit:{}@@"
_MARKED = re.compile('"' + _MARK.format("(\\w+)") + '"')


#: The per-message values, in the order :meth:`_Frame.fill` takes them.
_SLOTS = ("id", "eta", "argsrepr", "kwargsrepr", "body", "tag")


@dataclass
class _Frame:
    """One template's message as kombu's Redis channel writes it, with the values each
    message has of its own left out: the list it goes to, the text as pieces with a gap
    (None) between each two, the JSON text of the template's embed (callbacks, chain,
    chord), and which of the values (in :data:`_SLOTS` order) each gap takes."""

    key: str
    pieces: list[str | None]
    channel: Any
    embed: str
    pick: Callable[[tuple[str, ...]], tuple[str, ...]]

    @classmethod
    def of(cls, key: str, marked: str, channel: Any, embed: str) -> _Frame:
        """The frame of ``marked``, JSON text whose per-message values are marks."""
        split = _MARKED.split(marked)
        pieces: list[str | None] = list(split)
        pieces[1::2] = [None] * (len(split) // 2)
        slots = [_SLOTS.index(name) for name in split[1::2]]
        # itemgetter of one index gives the item itself, not a tuple of it.
        pick = itemgetter(*slots) if len(slots) > 1 else itemgetter(slice(slots[0], slots[0] + 1))
        return cls(key, pieces, channel, embed, pick)

    def fill(self, values: tuple[str, ...]) -> str:
        """The message text with each gap's value (JSON-quoted; :data:`_SLOTS` order): one
        join, about twice as fast as %-formatting the whole text."""
        text = self.pieces.copy()
        text[1::2] = self.pick(values)
        return "".join(text)  # type: ignore[arg-type]  # every gap is filled


class _RedisBatch:
    """One pipeline of LPUSHes, each message as kombu's Redis channel would write it."""

    def __init__(
        self,
        publisher: Publisher,
        producer: Any,
        refusal: Callable[[BaseException], str | None],
    ) -> None:
        self.publisher = publisher
        self.producer = producer
        self.channel = producer.channel
        self.refusal = refusal
        self.base64 = self.channel.body_encoding == "base64"
        self.tags = _Tags()
        #: The last message's (task, queue, priority, template, frame): a burst's tasks
        #: mostly share one.
        self._last: tuple[str, str, int | None, Template, _Frame | None] | None = None
        #: Each run time's eta header, JSON-quoted: a burst shares a few run times.
        self.etas: dict[datetime, str] = {}

    def _declare(self, template: Template, declare: Sequence[Any]) -> None:
        """Declare the template's queue once per channel, as Producer.publish would."""
        channel = self.channel
        if template.declared_on is channel:
            return
        if template.refused_on is channel and template.refusal is not None:
            # kombu may cache a declaration that failed: refuse as the first one was.
            raise template.refusal
        try:
            for entity in declare:
                self.producer.maybe_declare(entity, retry=False)
        except Exception as exc:
            template.refused_on, template.refusal = channel, exc
            raise
        template.declared_on = channel

    def _frame(self, template: Template) -> _Frame | None:
        """The template's frame on this channel, made by kombu's own steps (Producer.publish,
        then the virtual channel's basic_publish up to its final LPUSH) from a message whose
        own values are marks. None when the route is not a plain queue (a named exchange,
        queues with an expiry) or the body is compressed: such messages go through
        ``producer.publish`` one by one."""
        channel = self.channel
        frame = template.frame
        if frame is not None and frame.channel is channel:
            return frame
        kwargs = dict(template.publish_kwargs)
        exchange = kwargs.pop("exchange", "")
        routing_key = kwargs.pop("routing_key", "")
        compression = kwargs.pop("compression", None)
        if exchange or compression or (channel._expires and routing_key in channel._expires):
            return None
        producer = self.producer
        self._declare(template, kwargs.pop("declare", None) or ())
        marks = {
            "eta": _MARK.format("eta"),
            "argsrepr": _MARK.format("argsrepr"),
            "kwargsrepr": _MARK.format("kwargsrepr"),
        }
        headers = {
            name: _MARK.format("id") if value == _PLACEHOLDER_ID else marks.get(name, value)
            for name, value in kwargs.pop("headers").items()
        }
        if kwargs.get("correlation_id") == _PLACEHOLDER_ID:
            kwargs["correlation_id"] = _MARK.format("id")
        priority = kwargs.pop("priority", 0)
        delivery_mode = kwargs.pop("delivery_mode", None)
        expiration = kwargs.pop("expiration", None)
        for unused in (
            "retry",
            "retry_policy",
            "timeout",
            "confirm_timeout",
            "mandatory",
            "immediate",
            "content_type",
            "content_encoding",
            "serializer",
        ):
            kwargs.pop(unused, None)  # arguments of Producer.publish, not message properties
        if expiration is not None:
            kwargs["expiration"] = str(int(expiration * 1000))
        kwargs["delivery_mode"] = producer._delivery_details(exchange, delivery_mode)[1]
        _, content_type, content_encoding = producer._prepare([], "json", None, None, None, headers)
        message = channel.prepare_message(
            "", priority, content_type, content_encoding, headers, kwargs
        )
        channel._inplace_augment_message(message, exchange, routing_key)
        message["body"] = _MARK.format("body")
        message["properties"]["delivery_tag"] = _MARK.format("tag")
        key = channel._q_for_pri(routing_key, channel._get_message_priority(message, False))
        frame = _Frame.of(key, json_dumps(message), channel, json_dumps(template.embed))
        template.frame = frame
        return frame

    def _message(self, task: Claimed) -> tuple[str, str] | None:
        """(list key, message text) of ``task``, or None when it must go one by one."""
        last = self._last
        if (
            last is not None
            and last[0] == task.task
            and last[1] == task.queue
            and last[2] == task.priority
        ):
            template, frame = last[3], last[4]
        else:
            template = self.publisher.template(task)
            frame = self._frame(template)
            self._last = (task.task, task.queue, task.priority, template, frame)
        if frame is None:
            return None
        args_text, argsrepr = _args_parts(task, template)
        kwargs_json = task.kwargs_json
        if kwargs_json == "" or (kwargs_json is None and not task.kwargs):
            kwargs_text = kwargsrepr = "{}"
        else:
            kwargs = task.kwargs
            # Decoded from JSON: a plain encoder writes what kombu's would.
            kwargs_text = _encode(kwargs)
            kwargsrepr = _repr(kwargs, template.kwargsrepr_size, template.repr_levels)
        # The body is what json_dumps((args, kwargs, embed)) writes, the embed encoded once
        # per template.
        body = f"[{args_text}, {kwargs_text}, {frame.embed}]"
        if self.base64:
            encoded = '"' + b2a_base64(body.encode(), newline=False).decode("ascii") + '"'
        else:
            encoded = quote(self.channel.encode_body(body, self.channel.body_encoding)[0])
        run_at = task.run_at
        eta = self.etas.get(run_at)
        if eta is None:
            eta = self.etas[run_at] = quote(run_at.isoformat())
        text = frame.fill(
            (quote(task.id), eta, quote(argsrepr), quote(kwargsrepr), encoded, self.tags.next())
        )
        return frame.key, text

    def send(self, tasks: Sequence[Claimed]) -> list[str | None]:
        """Publish ``tasks``: one LPUSH per queue list, all in one pipeline round trip. A
        queue list refusing its LPUSH (WRONGTYPE) refuses each of its messages."""
        reasons: list[str | None] = [None] * len(tasks)
        lists: dict[str, tuple[list[int], list[str]]] = {}
        for n, task in enumerate(tasks):
            try:
                prepared = self._message(task)
            except Exception as exc:
                reason = self.refusal(exc)
                if reason is None:
                    raise
                reasons[n] = reason
                continue
            if prepared is None:
                reasons[n] = self.publisher._one(self.producer, task, self.refusal)
                continue
            key, text = prepared
            positions, texts = lists.setdefault(key, ([], []))
            positions.append(n)
            texts.append(text)
        if not lists:
            return reasons
        with self.channel.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            for key, (_, texts) in lists.items():
                pipe.lpush(key, *texts)  # in order: the worker pops the first one first
            replies = pipe.execute(raise_on_error=False)
        for (positions, _), reply in zip(lists.values(), replies, strict=True):
            if isinstance(reply, Exception):
                reason = self.refusal(reply)
                if reason is None:
                    raise reply
                for n in positions:
                    reasons[n] = reason
        return reasons


class _Confirms:
    """Publisher confirms on one AMQP channel: publish a chunk, then wait for its acks."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.sent = 0  # delivery tags the broker gives our publishes, counted from 1
        self.acked: set[int] = set()
        self.nacked: set[int] = set()
        self.low = 0  # every tag at or below it is confirmed (a "multiple" ack)
        self.low_nacked = 0
        self._waits = not channel.connection.confirm_publish  # else kombu waits per publish
        if self._waits:
            channel.events["basic_ack"].add(self._ack)
            channel.events["basic_nack"].add(self._nack)
            channel.confirm_select()

    def _ack(self, tag: int, multiple: bool) -> None:
        if multiple:
            self.low = max(self.low, tag)
        else:
            self.acked.add(tag)

    def _nack(self, tag: int, multiple: bool) -> None:
        if multiple:
            self.low_nacked = max(self.low_nacked, tag)
        else:
            self.nacked.add(tag)

    def _confirmed(self, tag: int) -> bool:
        return tag <= self.low or tag in self.acked or self._refused(tag)

    def _refused(self, tag: int) -> bool:
        return tag in self.nacked or (tag <= self.low_nacked and tag > self.low)

    def send(
        self,
        publisher: Publisher,
        producer: Any,
        tasks: Sequence[Claimed],
        refusal: Callable[[BaseException], str | None],
    ) -> list[str | None]:
        """Publish ``tasks`` without waiting, then wait for all their confirms. A nack (the
        broker lost the message) is raised as the broker failing, so the rest is released."""
        tags: list[int] = []
        reasons: list[str | None] = []
        for task in tasks:
            reasons.append(publisher._one(producer, task, refusal))
            if reasons[-1] is None:
                self.sent += 1
                tags.append(self.sent)
        if not self._waits or not tags:
            return reasons
        connection = self.channel.connection
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        while not all(self._confirmed(tag) for tag in tags):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no publisher confirm within {CONFIRM_TIMEOUT:.0f}s")
            connection.drain_events(timeout=left)
        refused = [tag for tag in tags if self._refused(tag)]
        self.acked.difference_update(tags)
        if refused:
            raise ConnectionError(f"the broker nacked {len(refused)} of {len(tags)} messages")
        return reasons
