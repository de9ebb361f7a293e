"""Commands sent now and answered later: the dispatcher's overlap of Redis and Python.

The dispatcher sends a round's settle and the next round's claim, builds and publishes
messages, and only then reads the replies, so Redis runs the scripts while Python works.
redis-py's pipeline sends and reads in one call; :class:`Deferred` splits the two, with one
connection per server held in between.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

__all__ = ["Deferred"]


class Deferred:
    """Each server's commands, sent at once on a connection of its own; :meth:`replies`
    reads them (call it exactly once; it returns the connections to their pools)."""

    def __init__(self, batches: Sequence[tuple[redis.Redis, Sequence[tuple[Any, ...]]]]) -> None:
        #: (pool, connection, replies owed) per batch, in order.
        self._sent: list[tuple[Any, Any, int]] = []
        try:
            for client, commands in batches:
                pool = client.connection_pool
                connection: Any = pool.get_connection()  # redis-py types it loosely
                self._sent.append((pool, connection, len(commands)))
                connection.send_packed_command(connection.pack_commands(commands))
        except BaseException:
            for pool, connection, _ in self._sent:
                connection.disconnect()
                pool.release(connection)
            raise

    def replies(self) -> list[list[Any]]:
        """Each batch's replies in order. A script Redis no longer has is answered with its
        NoScriptError (nothing of that call ran), not raised; any other failure is raised
        after every connection is back in its pool (a failed one disconnected)."""
        answers: list[list[Any]] = []
        failure: BaseException | None = None
        for pool, connection, owed in self._sent:
            got: list[Any] = []
            try:
                for _ in range(owed):
                    try:
                        got.append(connection.read_response())
                    except redis.exceptions.NoScriptError as missing:
                        got.append(missing)
            except BaseException as exc:
                connection.disconnect()
                failure = failure or exc
            finally:
                pool.release(connection)
            answers.append(got)
        if failure is not None:
            raise failure
        return answers
