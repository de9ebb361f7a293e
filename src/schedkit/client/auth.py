"""The client's credentials: TLS, and the blocking channel's interceptor that adds the bearer
header to every call (the asyncio client passes the same metadata on each call)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from schedkit.errors import ConfigError
from schedkit.wire.metadata import read_pem


class _AddHeader(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the bearer header to every call (plain and TLS channels alike)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), *self._metadata]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def channel_credentials(
    *, ca: str | Path | None = None, cert: str | Path | None = None, key: str | Path | None = None
) -> grpc.ChannelCredentials:
    """Client TLS: trust ``ca`` (system roots when None); present cert/key for mTLS."""
    if bool(cert) != bool(key):
        raise ConfigError("a client certificate needs both tls_cert and tls_key")
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca, "CA") if ca else None,
        private_key=read_pem(key, "key") if key else None,
        certificate_chain=read_pem(cert, "certificate") if cert else None,
    )


def header_interceptor(metadata: tuple[tuple[str, str], ...]) -> _AddHeader:
    """A client interceptor that sends ``metadata`` (the bearer header) on every call."""
    return _AddHeader(metadata)
