"""Which Celery tasks may be scheduled (registered in the app and allowed by the pattern), and
which queues they may name (allowed, so some worker consumes them)."""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from celery import Celery

from schedkit.errors import EXCERPT_CHARS, ConfigError, FieldViolation, InvalidArgument, excerpt
from schedkit.model import TaskType


def load_app(reference: str) -> Celery:
    """Import a Celery app from ``module:attribute`` (``module`` alone looks for ``app``)."""
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import the Celery app module {module_name!r}: {exc}") from exc
    app = getattr(module, attribute or "app", None)
    if not isinstance(app, Celery):
        raise ConfigError(f"{reference!r} does not name a Celery app instance")
    return app


_UNKNOWN: Any = object()
_MAX_VERDICTS = 4096
# Verdicts are kept only for calls whose task and keyword names are this short in all, so the
# verdict cache stays small whatever callers send; a longer task name has no close matches.
_MAX_SHAPE_CHARS = 1024
_MAX_PROBLEM_CHARS = 256


def declared_queues(app: Celery) -> set[str]:
    """The queues ``app``'s workers consume unless told otherwise, and those its simple
    routes (a mapping, or a list of mappings, of task pattern to queue) send to."""
    conf = app.conf
    queues = {_queue_name(q) for q in conf.task_queues or ()} - {""}
    if not queues:
        queues = {conf.task_default_queue}
    routes = conf.task_routes
    tables = [routes] if isinstance(routes, Mapping) else list(routes or ())
    for table in tables:
        if isinstance(table, Mapping):  # router functions and classes are not read
            queues.update(_queue_name(route) for route in table.values())
    return queues - {""}


def _queue_name(item: Any) -> str:
    """The queue a task_queues entry or a route names ('' when it names none)."""
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping):
        return _queue_name(item.get("queue", ""))
    name = getattr(item, "name", "")  # a kombu Queue
    return name if isinstance(name, str) else ""


def allowed_queues(app: Celery, allow: str = "") -> frozenset[str]:
    """The queue names a task may ask for: ``allow`` (comma separated), else the declared."""
    names = {q.strip() for q in allow.split(",") if q.strip()}
    return frozenset(names or declared_queues(app))


def worker_queues(app: Celery, allow: str = "") -> list[str]:
    """What a worker must consume: every allowed queue, and the declared ones that tasks
    without a queue are routed to."""
    return sorted(allowed_queues(app, allow) | declared_queues(app))


class TaskRegistry:
    """The tasks of one Celery app that schedkit lets callers schedule."""

    def __init__(self, app: Celery, allow: str = "*", allow_queues: str = "") -> None:
        self.app = app
        self._patterns = [p.strip() for p in allow.split(",") if p.strip()] or ["*"]
        self._allow_queues = allow_queues
        self._queues: frozenset[str] | None = None  # read from the app on first use
        self._signatures: dict[str, inspect.Signature | None] = {}
        self._verdicts: dict[tuple[str, int, tuple[str, ...]], tuple[str, str] | None] = {}

    def allowed(self, name: str) -> bool:
        """True if ``name`` is a registered, non-internal task matching the allow pattern."""
        return (
            name in self.app.tasks
            and not name.startswith("celery.")
            and any(fnmatch.fnmatchcase(name, p) for p in self._patterns)
        )

    def names(self) -> list[str]:
        """Sorted names of every allowed task."""
        self.app.loader.import_default_modules()
        return sorted(n for n in self.app.tasks if self.allowed(n))

    def task_types(self) -> list[TaskType]:
        """Every allowed task with its signature and docstring's first line."""
        types = []
        for name in self.names():
            task = self.app.tasks[name]
            signature = self._signature(name)
            doc = inspect.getdoc(task.run) or ""
            types.append(
                TaskType(
                    name=name,
                    signature=str(signature) if signature else "(*args, **kwargs)",
                    doc=doc.strip().splitlines()[0] if doc.strip() else "",
                )
            )
        return types

    def check(
        self, name: str, args: list[Any], kwargs: dict[str, Any], *, field_prefix: str
    ) -> None:
        """Raise InvalidArgument unless ``name`` is allowed and accepts these arguments."""
        # Binding a signature costs microseconds and only the call's shape matters: answer
        # each (task, positional count, keyword names) once. Unknown names are not cached, so
        # tasks registered later are found.
        shape = (name, len(args), tuple(kwargs))
        problem = self._verdicts.get(shape, _UNKNOWN)
        if problem is _UNKNOWN:
            problem = self._problem(name, args, kwargs)
            small = len(name) + sum(map(len, kwargs)) <= _MAX_SHAPE_CHARS
            if small and (problem is None or problem[0] == "args"):
                if len(self._verdicts) >= _MAX_VERDICTS:
                    self._verdicts.clear()
                self._verdicts[shape] = problem
        if problem is not None:
            field, message = problem
            raise InvalidArgument(
                f"arguments {message}" if field == "args" else f"{field_prefix}{field}: {message}",
                violations=(FieldViolation(f"{field_prefix}{field}", message),),
            )

    def queues(self) -> frozenset[str]:
        """The queue names a task may ask for (besides none: the default routing)."""
        if self._queues is None:
            self._queues = allowed_queues(self.app, self._allow_queues)
        return self._queues

    def check_queue(self, queue: str, *, field_prefix: str) -> None:
        """Raise InvalidArgument unless ``queue`` is empty or allowed.

        A queue is a key in a Redis broker: one no worker reads parks its tasks for ever, and
        one that is not a list breaks every hand-off to it.
        """
        if not queue or queue in self.queues():
            return
        close = difflib.get_close_matches(queue[:EXCERPT_CHARS], self.queues(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        message = (
            f"queue {excerpt(queue)!r} is not allowed: no worker is known to consume it "
            f"(SCHEDKIT_ALLOW_QUEUES){hint}"
        )
        raise InvalidArgument(
            f"{field_prefix}queue: {message}",
            violations=(FieldViolation(f"{field_prefix}queue", message),),
        )

    def _problem(
        self, name: str, args: list[Any], kwargs: dict[str, Any]
    ) -> tuple[str, str] | None:
        """(field, message) of what is wrong with calling ``name`` like this, or None."""
        if not name:
            return "task", "required: a task name"
        if not self.allowed(name):
            close = (
                difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
                if len(name) <= _MAX_SHAPE_CHARS
                else []
            )
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            return (
                "task",
                f"unknown task {excerpt(name)!r}: not registered in the Celery app or not "
                f"allowed{hint}",
            )
        signature = self._signature(name)
        if signature is None:
            return None
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            # The TypeError names a keyword the caller sent, which may be of any length.
            return "args", f"do not fit {name}{signature}: {excerpt(str(exc), _MAX_PROBLEM_CHARS)}"
        return None

    def _signature(self, name: str) -> inspect.Signature | None:
        if name not in self._signatures:
            try:
                self._signatures[name] = inspect.signature(self.app.tasks[name].run)
            except (TypeError, ValueError):
                self._signatures[name] = None
        return self._signatures[name]
