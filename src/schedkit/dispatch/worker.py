"""Run a Celery worker for the configured app, with the schedkit hook installed."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import setup_logging

from schedkit.dispatch.hook import install
from schedkit.dispatch.registry import load_app, worker_queues
from schedkit.dispatch.transport import transport_for
from schedkit.logs import configure
from schedkit.settings import Settings


def configure_app(app: Celery, settings: Settings) -> Celery:
    """Point ``app`` at the configured broker (when one is set) and install the hook."""
    if settings.effective_broker_url:
        app.conf.update(broker_url=settings.effective_broker_url)
    # A redis:// broker without a transport of the app's own choosing: kombu's, minus a
    # client object built per command and the unacked record of schedkit's own hand-offs
    # (dispatch/transport.py).
    transport = transport_for(app.conf.broker_url or "")
    if transport and not app.conf.broker_transport:
        app.conf.update(broker_transport=transport)
    app.conf.update(broker_connection_retry_on_startup=True)
    # Redis broker: a message a worker took but never acknowledged (it died holding ETA
    # tasks) goes back to the queue after this long. schedkit hands tasks off at most a
    # hand-off window early, so this can be minutes rather than Celery's default hour;
    # a copy delivered twice is refused by the hook's duplicate-start check.
    # Early acknowledgement (Celery's default) stays: a task killed mid-run is not re-run.
    options = dict(app.conf.broker_transport_options or {})
    options.setdefault("visibility_timeout", settings.visibility_timeout)
    # kombu sweeps for such messages every interval x throttle seconds (100 s by default);
    # sweep a few times per visibility timeout instead, with one cheap ZRANGE each time.
    options.setdefault(
        "unacked_restore_interval", max(1, min(30, settings.visibility_timeout // 5))
    )
    options.setdefault("unacked_restore_throttle", 1)
    for name, value in settings.broker_transport_options().items():
        options.setdefault(name, value)
    if not settings.worker_ack_emulation:
        options["ack_emulation"] = False  # see Settings.worker_ack_emulation
    app.conf.update(broker_transport_options=options)
    install(app, settings if settings.store_url else None)
    return app


def worker_argv(
    *,
    concurrency: int,
    pool: str = "prefork",
    queues: list[str] | None = None,
    loglevel: str = "INFO",
) -> list[str]:
    """The ``celery worker`` arguments schedkit uses; ``queues`` become ``-Q``."""
    return [
        "worker",
        *([f"--queues={','.join(queues)}"] if queues else []),
        f"--loglevel={loglevel}",
        f"--concurrency={concurrency}",
        f"--pool={pool}",
        "--without-gossip",
        "--without-mingle",
        "--hostname=schedkit@%h",
    ]


def run_worker(settings: Settings, *, concurrency: int, pool: str = "prefork") -> None:
    """Load the app, configure it, and run its worker in this process until stopped."""
    app = configure_app(load_app(settings.app), settings)

    def own_logging(loglevel: int | str | None = None, **_: Any) -> None:
        # Connected: Celery leaves logging to us, so worker lines share schedkit's format; at
        # the worker's level, or WARNING would still write three INFO lines per task.
        level = logging.getLevelName(loglevel.upper()) if isinstance(loglevel, str) else loglevel
        configure(settings.log_format, level=level if isinstance(level, int) else logging.INFO)

    setup_logging.connect(own_logging, weak=False)
    # Every queue a task may name, so an accepted queue is never one nobody reads.
    queues = worker_queues(app, settings.allow_queues)
    app.worker_main(
        worker_argv(
            concurrency=concurrency, pool=pool, queues=queues, loglevel=settings.worker_loglevel
        )
    )
