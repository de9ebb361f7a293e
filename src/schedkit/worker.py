"""Run a Celery worker for the configured app, with the schedkit hook installed."""

from __future__ import annotations

from celery import Celery

from schedkit.hook import install
from schedkit.registry import load_app
from schedkit.settings import Settings


def configure_app(app: Celery, settings: Settings) -> Celery:
    """Point ``app`` at the configured broker (when one is set) and install the hook."""
    if settings.effective_broker_url:
        app.conf.update(broker_url=settings.effective_broker_url)
    app.conf.update(broker_connection_retry_on_startup=True)
    install(app, settings if settings.store_url else None)
    return app


def worker_argv(settings: Settings, *, concurrency: int, pool: str = "prefork") -> list[str]:
    """The ``celery worker`` arguments schedkit uses."""
    return [
        "worker",
        "--loglevel=INFO",
        f"--concurrency={concurrency}",
        f"--pool={pool}",
        "--without-gossip",
        "--without-mingle",
        "--hostname=schedkit@%h",
    ]


def run_worker(settings: Settings, *, concurrency: int, pool: str = "prefork") -> None:
    """Load the app, configure it, and run its worker in this process until stopped."""
    app = configure_app(load_app(settings.app), settings)
    app.worker_main(worker_argv(settings, concurrency=concurrency, pool=pool))
