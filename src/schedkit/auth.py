"""Who may call the server: bearer tokens, TLS credentials and the loopback rule.

The server checks ``authorization: Bearer <token>`` on every method except health and
reflection (load balancers and ``buf curl`` discovery need those without a secret), in
constant time. Clients add the header with a channel interceptor, so it works on plain and
TLS channels alike. A server on a non-loopback address must have a token or client
certificates (mTLS), unless started with ``--insecure``.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from schedkit.errors import ConfigError
from schedkit.settings import Settings

METADATA_KEY = "authorization"
# Health and reflection answer without a token: probes and API discovery carry no secrets.
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def _abort_handler(
    handler: grpc.RpcMethodHandler[Any, Any], message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kinds: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler[Any, Any]]] = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        abort,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuse calls without an accepted bearer token with UNAUTHENTICATED."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens:
            raise ConfigError("a token interceptor needs at least one token")
        self._tokens = [t.encode() for t in tokens]

    def accepts(self, presented: str) -> bool:
        """True when ``presented`` is one of the tokens (compared in constant time)."""
        given = presented.encode()
        # No early exit: every token is compared, so timing tells nothing about which matched.
        matches = [hmac.compare_digest(given, token) for token in self._tokens]
        return any(matches)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """Pass the call on when it carries a token, else answer UNAUTHENTICATED."""
        method: str = handler_call_details.method
        handler = continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        header = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == METADATA_KEY:
                header = value if isinstance(value, str) else value.decode(errors="replace")
        scheme, _, presented = header.partition(" ")
        if not header:
            return _abort_handler(
                handler, "missing credentials: send 'authorization: Bearer <token>'"
            )
        if scheme.lower() != "bearer" or not self.accepts(presented.strip()):
            return _abort_handler(handler, "invalid token")
        return handler


class _AddHeader(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the bearer header to every call (plain and TLS channels alike)."""

    def __init__(self, token: str) -> None:
        self._header = (METADATA_KEY, f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._header]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS {what} {path}: {exc}") from exc


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from tls_cert/tls_key (and tls_ca for mTLS), or None for plaintext."""
    if not settings.tls_cert and not settings.tls_key:
        if settings.tls_ca:
            raise ConfigError("SCHEDKIT_TLS_CA (--tls-ca) needs --tls-cert and --tls-key too")
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key (SCHEDKIT_TLS_CERT/_KEY)")
    pair = [(_read(settings.tls_key, "key"), _read(settings.tls_cert, "certificate"))]
    if settings.tls_ca:
        return grpc.ssl_server_credentials(
            pair, root_certificates=_read(settings.tls_ca, "CA"), require_client_auth=True
        )
    return grpc.ssl_server_credentials(pair)


def channel_credentials(
    *, ca: str | Path | None = None, cert: str | Path | None = None, key: str | Path | None = None
) -> grpc.ChannelCredentials:
    """Client TLS: trust ``ca`` (system roots when None); present cert/key for mTLS."""
    if bool(cert) != bool(key):
        raise ConfigError("a client certificate needs both tls_cert and tls_key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "CA") if ca else None,
        private_key=_read(key, "key") if key else None,
        certificate_chain=_read(cert, "certificate") if cert else None,
    )


def header_interceptor(token: str) -> _AddHeader:
    """A client interceptor that sends the bearer token on every call."""
    return _AddHeader(token)


def is_loopback(listen: str) -> bool:
    """True when ``host:port`` binds to loopback only (127.0.0.0/8, ::1 or localhost)."""
    host = listen.rsplit(":", 1)[0] if ":" in listen else listen
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_exposure(settings: Settings) -> None:
    """Refuse a non-loopback listen address without a token or mTLS, unless --insecure."""
    if is_loopback(settings.listen) or settings.insecure:
        return
    if settings.tokens() or (settings.tls_cert and settings.tls_ca):
        return
    raise ConfigError(
        f"refusing to listen on {settings.listen} without authentication: set SCHEDKIT_TOKEN "
        "(or --token-file), or client certificates (--tls-cert, --tls-key, --tls-ca); "
        "or pass --insecure to serve anyone who can reach that address"
    )
