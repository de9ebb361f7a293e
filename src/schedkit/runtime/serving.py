"""One gRPC server process from settings: store, Celery app, broker, registry, server.

``schedkit serve`` builds one of these; ``schedkit serve --processes N`` builds one in each of
its N processes (:mod:`schedkit.runtime.processes`).
"""

from __future__ import annotations

from schedkit.dispatch.broker import Broker
from schedkit.dispatch.registry import TaskRegistry, load_app
from schedkit.errors import SchedkitError
from schedkit.service.schedules import Schedules
from schedkit.service.server import Server
from schedkit.settings import Settings
from schedkit.store.store import Store


def connect_store(settings: Settings) -> Store:
    """The store of ``settings.store_url``, answering; ``schedkit up`` embeds one instead."""
    if not settings.store_url:
        raise SchedkitError(
            "--store (or SCHEDKIT_STORE_URL) is required here; `schedkit up` embeds one"
        )
    store = Store.for_settings(settings)
    store.ping()
    return store


def build_server(settings: Settings, store: Store, *, reuse_port: bool = False) -> Server:
    """A server (not started) over ``store`` and the Celery app that ``settings`` names."""
    app = load_app(settings.app)
    broker = Broker.for_settings(app, settings)
    registry = TaskRegistry(app, settings.allow_tasks, settings.allow_queues)
    schedules = Schedules(store, registry, settings, broker=broker)
    return Server(schedules, reuse_port=reuse_port)
