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
from collections.abc import Sequence
from typing import Any

import grpc

from schedkit.errors import ConfigError
from schedkit.service.handlers import Continuation, Handler
from schedkit.settings import Settings
from schedkit.wire.metadata import METADATA_KEY, read_pem

# Health and reflection answer without a token: probes and API discovery carry no secrets.
OPEN_SERVICES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def refusal(code: grpc.StatusCode, message: str) -> Handler:
    """A handler that ends the call with ``code`` without reading its request.

    Request-streaming whatever the method: the server then never asks gRPC for the request
    message, so a caller refused here cannot make the server read (and hold) a large body;
    HTTP/2 flow control keeps the sender at its first window.
    """

    async def refuse(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    return grpc.stream_stream_rpc_method_handler(refuse)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuse calls without an accepted bearer token with UNAUTHENTICATED, unread."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens:
            raise ConfigError("a token interceptor needs at least one token")
        self._tokens = [t.encode() for t in tokens]

    def accepts(self, presented: str) -> bool:
        """True when ``presented`` is one of the tokens (compared in constant time)."""
        return self.caller(presented) is not None

    def caller(self, presented: str) -> str | None:
        """Which token ``presented`` is (``token#N``, never the secret), or None."""
        given = presented.encode()
        # No early exit: every token is compared, so timing tells nothing about which matched.
        matches = [hmac.compare_digest(given, token) for token in self._tokens]
        return next((f"token#{n}" for n, match in enumerate(matches) if match), None)

    def caller_of(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
        """The caller a call's metadata authenticates, or None."""
        headers = authorization_headers(metadata)
        if len(headers) != 1:
            return None
        scheme, _, presented = headers[0].partition(" ")
        return self.caller(presented.strip()) if scheme.lower() == "bearer" else None

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        """Pass the call on when it carries a token, else answer UNAUTHENTICATED."""
        method: str = handler_call_details.method
        if method.startswith(OPEN_SERVICES):
            return await continuation(handler_call_details)
        headers = authorization_headers(handler_call_details.invocation_metadata)
        if not headers:
            return refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing credentials: send 'authorization: Bearer <token>'",
            )
        if len(headers) > 1:
            # Proxies and servers disagree on which of several wins: accept none.
            return refusal(
                grpc.StatusCode.UNAUTHENTICATED, "more than one authorization header: send one"
            )
        if self.caller_of(handler_call_details.invocation_metadata) is None:
            return refusal(grpc.StatusCode.UNAUTHENTICATED, "invalid token")
        return await continuation(handler_call_details)


def authorization_headers(metadata: Sequence[tuple[str, str | bytes]] | None) -> list[str]:
    """Every ``authorization`` value of a call's metadata, as text."""
    return [
        value if isinstance(value, str) else value.decode(errors="replace")
        for key, value in metadata or ()
        if key == METADATA_KEY
    ]


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from tls_cert/tls_key (and tls_ca for mTLS), or None for plaintext."""
    if not settings.tls_cert and not settings.tls_key:
        if settings.tls_ca:
            raise ConfigError("SCHEDKIT_TLS_CA (--tls-ca) needs --tls-cert and --tls-key too")
        return None
    if not (settings.tls_cert and settings.tls_key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key (SCHEDKIT_TLS_CERT/_KEY)")
    pair = [(read_pem(settings.tls_key, "key"), read_pem(settings.tls_cert, "certificate"))]
    if settings.tls_ca:
        return grpc.ssl_server_credentials(
            pair, root_certificates=read_pem(settings.tls_ca, "CA"), require_client_auth=True
        )
    return grpc.ssl_server_credentials(pair)


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
