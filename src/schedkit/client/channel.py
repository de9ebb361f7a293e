"""What both clients decide before a channel opens: target, TLS, token and message limits from
``connect``'s arguments and SCHEDKIT_* variables, and the errors of a channel that is not there.

The blocking client opens a ``grpc`` channel from a :class:`ChannelPlan`, the asyncio client a
``grpc.aio`` one; neither repeats how the arguments are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from schedkit.client.auth import channel_credentials
from schedkit.errors import Unavailable
from schedkit.settings import Settings
from schedkit.wire.metadata import METADATA_KEY

DEFAULT_TARGET = "127.0.0.1:50051"
MAX_MESSAGE_BYTES = Settings.max_message_bytes


@dataclass(frozen=True)
class ChannelPlan:
    """How to open a channel: credentials (None: plaintext), options, and the call metadata."""

    target: str
    credentials: grpc.ChannelCredentials | None
    options: list[tuple[str, int]]
    metadata: tuple[tuple[str, str], ...]

    @property
    def tls(self) -> bool:
        """Whether the channel uses TLS."""
        return self.credentials is not None

    def not_ready(self, wait_ready: float) -> Unavailable:
        """The error for a server that did not answer within ``wait_ready`` seconds."""
        hint = " (with TLS: check the CA and the server's certificate)" if self.tls else ""
        return Unavailable(
            f"no schedkit server answered at {self.target} within {wait_ready:g}s{hint}; "
            "is `schedkit up` running?"
        )


def plan_channel(
    target: str,
    *,
    token: str | None,
    tls: bool | None,
    tls_ca: str | Path | None,
    tls_cert: str | Path | None,
    tls_key: str | Path | None,
    max_message_bytes: int,
) -> ChannelPlan:
    """Read ``connect``'s arguments: ``token`` None reads SCHEDKIT_TOKEN or SCHEDKIT_TOKEN_FILE
    (first line) and '' sends none; TLS is on when ``tls`` is True or a CA or client certificate
    is given (``tls_ca`` None reads SCHEDKIT_TLS_CA; system roots otherwise)."""
    env = Settings.from_env()
    if token is None:
        tokens = env.tokens()
        token = tokens[0] if tokens else ""
    tls_ca = env.tls_ca or None if tls_ca is None else tls_ca
    if tls is None:
        tls = bool(tls_ca or tls_cert)
    credentials = channel_credentials(ca=tls_ca, cert=tls_cert, key=tls_key) if tls else None
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    return ChannelPlan(target, credentials, options, bearer_metadata(token))


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token`` (none for '')."""
    return ((METADATA_KEY, f"Bearer {token}"),) if token else ()


def closed_error() -> Unavailable:
    """What a call on a closed client raises (grpc's own is a bare ValueError)."""
    return Unavailable("this Client is closed; use Client.connect(...) again")
