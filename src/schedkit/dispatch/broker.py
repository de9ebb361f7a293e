"""A handle on one Celery broker that does not go through the app's own pools.

Celery caches its producer pool and control mailbox per app on first use, from the app's
configuration at that moment. schedkit may share an app object with other code (tests, several
stacks, a user's process), so publishing and control commands use this handle instead.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from celery import Celery
from kombu import Connection

from schedkit.settings import Settings


class Broker:
    """Publishing and control (revoke, ping, inspect) for the broker at ``url``."""

    def __init__(
        self,
        app: Celery,
        url: str | None = None,
        *,
        transport_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._app = app
        self._url = url or None
        # Added to the app's own broker_transport_options (a Sentinel broker's master_name).
        self._transport_options = dict(transport_options or {})
        self.connection: Connection = self._connect()
        self._producer: Any = None
        self._lock = threading.Lock()
        # Control commands only need the broker: a bare app keeps them off the user's pools.
        self._control = Celery(
            "schedkit-control",
            broker=self.connection.as_uri(include_password=True),
            set_as_current=False,
        )
        self._control.conf.update(
            accept_content=["json"],
            task_serializer="json",
            broker_transport_options={
                **(app.conf.broker_transport_options or {}),
                **self._transport_options,
            },
        )

    @classmethod
    def for_settings(cls, app: Celery, settings: Settings) -> Broker:
        """The broker ``settings`` name (their own, or the one beside the store)."""
        return cls(
            app,
            settings.effective_broker_url,
            transport_options=settings.broker_transport_options(),
        )

    def _connect(self) -> Connection:
        return self._app.connection_for_write(self._url, transport_options=self._transport_options)

    @contextlib.contextmanager
    def producer(self) -> Iterator[Any]:
        """This handle's producer, made on first use (one publisher thread at a time)."""
        with self._lock:
            if self._producer is None:
                self._producer = self.connection.Producer()
            yield self._producer

    def reset(self) -> None:
        """Drop the connection and its producer after a failure; the next use connects
        afresh. kombu can leave a broken channel behind that fails with AttributeError,
        not a connection error, on every later publish."""
        with self._lock:
            self._producer = None
            with contextlib.suppress(Exception):
                self.connection.release()
            self.connection = self._connect()

    def revoke(self, task_id: str) -> None:
        """Ask every worker to drop ``task_id``."""
        self._control.control.revoke(task_id)

    def ping(self, timeout: float = 1.0) -> list[dict[str, Any]]:
        """Replies of the workers listening on this broker."""
        replies: Any = self._control.control.ping(timeout=timeout)
        return list(replies or [])

    def scheduled(self, timeout: float = 1.0) -> dict[str, list[dict[str, Any]]]:
        """ETA tasks each worker holds in memory, by worker name."""
        held: Any = self._control.control.inspect(timeout=timeout).scheduled()
        return dict(held or {})

    def close(self) -> None:
        """Release the connection and the control app's pools."""
        self.connection.release()
        self._control.close()
