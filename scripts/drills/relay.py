"""A TCP relay that can go silent: a network partition between schedkit and its store, for
the fault drills and tests (a real partition needs firewall rules, which they cannot count on).

Silent, it keeps every connection open and passes nothing on, and takes new connections
without opening them upstream: what a dropped network looks like from either end.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

__all__ = ["SilentRelay"]


class SilentRelay:
    """Relays TCP from a free local port to ``upstream`` until :meth:`go_silent`, and again
    after :meth:`heal`. Use as a context manager, or :meth:`close` it."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.silent = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="silent-relay", daemon=True).start()

    @property
    def url(self) -> str:
        """A redis:// URL through the relay, for an upstream Redis."""
        return f"redis://127.0.0.1:{self.port}/0"

    def go_silent(self) -> None:
        """Pass nothing on from now on; connections stay open."""
        self.silent.set()

    def heal(self) -> None:
        """Relay again; connections that went silent stay silent (their clients drop them)."""
        self.silent.clear()

    def close(self) -> None:
        """Close the listener and every connection."""
        with self._lock:
            for sock in [self._listener, *self._sockets]:
                # shutdown first: close alone neither wakes a thread blocked on the socket
                # nor, while that thread holds it, ends the connection.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def __enter__(self) -> SilentRelay:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                downstream, _ = self._listener.accept()
                self._keep(downstream)
                if self.silent.is_set():
                    continue  # held open, never answered
                try:
                    upstream = socket.create_connection(self.upstream)
                except OSError:
                    downstream.close()  # refused upstream: refused here too, as without us
                    continue
                self._keep(upstream)
                for source, target in ((downstream, upstream), (upstream, downstream)):
                    threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        # A connection that went silent stays so: passing bytes again mid-reply would hand
        # its client half an answer.
        went_silent = False
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                went_silent = went_silent or self.silent.is_set()
                if not went_silent:
                    target.sendall(data)
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
