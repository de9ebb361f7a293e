"""The worker hook: records task states in the store and refuses what must not run.

``install(app)`` wraps four handlers on the app's base Task class, so every task defined with
``@app.task`` gets them: ``before_start`` asks the store to start the task (refusing a
cancelled, expired or already-started one with Celery's ``Ignore``): the run-once guard, the
one store call on the task's path. ``on_success``, ``on_failure`` and ``on_retry`` record how
it ended; final records are written in batches by a thread (:class:`Recorder`). Tasks not
scheduled by schedkit run as usual. Tasks with a custom ``base=`` class not derived from
``app.Task`` are not covered.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.exceptions import Ignore
from celery.signals import worker_process_shutdown

from schedkit.dispatch import overlap
from schedkit.errors import ConfigError, Unavailable
from schedkit.model import TaskState
from schedkit.settings import Settings
from schedkit.store.record import dumps
from schedkit.store.store import Store

log = logging.getLogger(__name__)

MAX_RESULT_CHARS = 4096
MAX_TRACEBACK_CHARS = 16384
STORE_RETRY_SECONDS = 2.0


class StoreHandle:
    """One Store per process, made on first use (worker children fork after import)."""

    def __init__(self, settings: Settings | None) -> None:
        self._settings = settings
        self._store: Store | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self.recorder = Recorder(self)

    def configure(self, settings: Settings | None) -> None:
        """Use these settings from now on (None keeps reading the environment)."""
        if settings is not None:
            with self._lock:
                self._settings = settings
                self._store = None

    def get(self) -> Store:
        """This process's store."""
        store = self._store
        if store is not None and self._pid == os.getpid():
            return store  # every task asks: no lock once made
        with self._lock:
            if self._store is None or self._pid != os.getpid():
                settings = self._settings or Settings.from_env()
                if not settings.store_url:
                    raise ConfigError(
                        "the schedkit worker hook needs the store: set SCHEDKIT_STORE_URL "
                        "or run the worker with `schedkit worker --store URL`"
                    )
                self._store = Store.for_settings(settings)
                self._pid = os.getpid()
            return self._store


def summarize(value: Any) -> str:
    """A short text form of a task's return value: JSON when possible, else repr."""
    try:
        text = dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= MAX_RESULT_CHARS else text[: MAX_RESULT_CHARS - 1] + "…"


def install(app: Celery, settings: Settings | None = None) -> StoreHandle:
    """Install the hook into ``app`` (idempotent) and make its messages JSON only."""
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_accept_content=["json"],
    )
    base: Any = app.Task
    existing: StoreHandle | None = getattr(base, "_schedkit_store", None)
    if existing is not None:
        existing.configure(settings)
        return existing
    handle = StoreHandle(settings)
    base._schedkit_store = handle
    # Pending finish records are written before a worker process ends.
    worker_process_shutdown.connect(_flusher(handle), weak=False)
    atexit.register(handle.recorder.flush)
    _wrap(base, "before_start", _before_start(handle))
    _wrap(base, "on_success", _on_success(handle))
    _wrap(base, "on_failure", _on_error(handle, TaskState.FAILED))
    _wrap(base, "on_retry", _on_error(handle, TaskState.RETRYING))
    return handle


def _flusher(handle: StoreHandle) -> Callable[..., None]:
    def flush(**_: Any) -> None:
        handle.recorder.flush()

    return flush


def _wrap(base: Any, name: str, hook: Callable[..., bool]) -> None:
    """Run ``hook`` first; the original handler runs unless the hook returns False."""
    original = getattr(base, name)

    def handler(self: Any, *args: Any) -> Any:
        if hook(self, *args) is False:
            return None
        return original(self, *args)

    handler.__name__ = name
    setattr(base, name, handler)


def _before_start(handle: StoreHandle) -> Callable[..., bool]:
    def hook(task: Any, task_id: str, args: Any, kwargs: Any) -> bool:
        try:
            verdict = overlap.start(handle.get(), task, task_id)
        except Unavailable as exc:
            # Nothing ran yet: ask Celery to deliver it again rather than run it unrecorded,
            # for as long as the store is away. (max_retries=None would mean the task's own
            # limit, 3 by default: a failover outlasting it failed the task unrun.)
            raise task.retry(
                exc=exc, countdown=STORE_RETRY_SECONDS, max_retries=task.request.retries + 1
            ) from exc
        if verdict in ("started", "unmanaged"):
            if verdict == "started":
                log.debug("started", extra={"task_id": task_id, "task": task.name})
            return True
        log.warning(
            "schedkit refused to start %s[%s]: %s",
            task.name,
            task_id,
            verdict,
            extra={"task_id": task_id, "task": task.name, "verdict": verdict},
        )
        raise Ignore(f"schedkit: {verdict}")

    return hook


class Recorder:
    """How tasks ended, written to the store in batches off the tasks' path.

    A worker process hands each final record (SUCCEEDED, FAILED) to a thread of its own that
    writes what gathered every :data:`FLUSH_SECONDS` in one round trip, so a task pays for
    one store call (the start guard), not two. RETRYING is written at once: the retry's start
    must find it. A process that ends flushes first (``worker_process_shutdown``, ``atexit``);
    one killed outright can lose the last few records, which leaves those tasks STARTED, as
    a task killed while it ran.
    """

    def __init__(self, handle: StoreHandle) -> None:
        self._handle = handle
        self._pending: list[tuple[str, TaskState, str, str, str]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid = 0

    def add(self, task_id: str, state: TaskState, result: str, error: str, traceback: str) -> None:
        """Queue one record; the thread writes it within FLUSH_SECONDS."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child: its own list and thread
                self._pending = []
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="schedkit-recorder", daemon=True).start()
            self._pending.append((task_id, state, result, error, traceback))
            if len(self._pending) >= FLUSH_BATCH:
                self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write what is pending now; on failure keep it for the next flush (bounded)."""
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            self._handle.get().finish_many(batch)
        except Exception:  # recording must never stop the worker
            log.exception("schedkit could not record %d finished tasks; retrying", len(batch))
            with self._lock:
                self._pending[:0] = batch[-MAX_PENDING:]


#: Seconds a finished task's record may wait to be written, and records written at once.
FLUSH_SECONDS = 0.02
FLUSH_BATCH = 200
#: Most records kept while the store is away (the oldest are dropped beyond it).
MAX_PENDING = 100_000


def _record(handle: StoreHandle, task_id: str, state: TaskState, **fields: str) -> None:
    log.debug("finished", extra={"task_id": task_id, "state": state.value})
    result = fields.get("result", "")
    error = fields.get("error", "")
    traceback = fields.get("traceback", "")
    try:
        if state is TaskState.RETRYING:
            handle.get().finish(task_id, state, result=result, error=error, traceback=traceback)
        else:
            handle.recorder.add(task_id, state, result, error, traceback)
    except Exception:  # recording must never change how the task itself ended
        log.exception(
            "schedkit could not record %s for %s",
            state.value,
            task_id,
            extra={"task_id": task_id, "state": state.value},
        )


def _on_success(handle: StoreHandle) -> Callable[..., bool]:
    def hook(task: Any, retval: Any, task_id: str, args: Any, kwargs: Any) -> bool:
        _record(handle, task_id, TaskState.SUCCEEDED, result=summarize(retval))
        return True

    return hook


def _error_fields(exc: BaseException, einfo: Any) -> dict[str, str]:
    traceback = str(getattr(einfo, "traceback", "") or "")
    return {
        "error": f"{type(exc).__name__}: {exc}"[:MAX_RESULT_CHARS],
        "traceback": traceback[-MAX_TRACEBACK_CHARS:],
    }


def _on_error(handle: StoreHandle, state: TaskState) -> Callable[..., bool]:
    """Celery's on_failure and on_retry take the same arguments; record the error either way."""

    def hook(
        task: Any, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> bool:
        _record(handle, task_id, state, **_error_fields(exc, einfo))
        overlap.finished(handle.get(), task_id, state)
        return True

    return hook
