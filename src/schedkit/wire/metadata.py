"""What both ends of a call agree on: header names, and reading credential files."""

from __future__ import annotations

from pathlib import Path

from schedkit.errors import ConfigError

#: The header that carries ``Bearer <token>``.
METADATA_KEY = "authorization"
#: Sent by the server in WatchTasks' initial metadata once the watch has its starting point:
#: nothing that happens after it is missed.
WATCHING_HEADER = "schedkit-watching"


def read_pem(path: str | Path, what: str) -> bytes:
    """The bytes of a TLS file, or ConfigError naming it (``what``: key, certificate, CA)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS {what} {path}: {exc}") from exc
