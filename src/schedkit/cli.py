"""``schedkit`` command line: thin wrappers that build Settings and call the library.

schedkit up        embedded Redis (unless --store), a worker, the dispatcher and the server
schedkit worker    a Celery worker for --app with the schedkit hook installed
schedkit serve     the gRPC server alone (several may share one store)
schedkit dispatch  the dispatcher alone (several may share one store)
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from schedkit.dispatch.dispatcher import Dispatcher
from schedkit.dispatch.registry import load_app
from schedkit.dispatch.worker import run_worker
from schedkit.errors import SchedkitError
from schedkit.logs import LOG_FORMATS, configure
from schedkit.runtime.metrics import MetricsServer, serve_metrics
from schedkit.runtime.processes import ServerProcesses, check_count
from schedkit.runtime.serving import build_server, connect_store
from schedkit.runtime.stack import Stack
from schedkit.settings import Settings
from schedkit.store.store import Store

log = logging.getLogger("schedkit")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app", help="Celery app as module:attr (SCHEDKIT_APP)")
    parser.add_argument(
        "--store", dest="store_url", help="Redis URL of the store (SCHEDKIT_STORE_URL)"
    )
    parser.add_argument(
        "--broker", dest="broker_url", help="Celery broker URL (SCHEDKIT_BROKER_URL)"
    )


def _metrics(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics on this port, 0 off (SCHEDKIT_METRICS_PORT; default off)",
    )
    parser.add_argument(
        "--metrics-addr", help="address of the metrics endpoint (SCHEDKIT_METRICS_ADDR)"
    )


def _serving(parser: argparse.ArgumentParser) -> None:
    _metrics(parser)
    parser.add_argument("--listen", help="gRPC address, default 127.0.0.1:50051 (SCHEDKIT_LISTEN)")
    parser.add_argument("--token", help="bearer token callers must send (SCHEDKIT_TOKEN)")
    parser.add_argument(
        "--token-file", help="file of accepted tokens, one per line (SCHEDKIT_TOKEN_FILE)"
    )
    parser.add_argument("--tls-cert", help="server certificate, PEM (SCHEDKIT_TLS_CERT)")
    parser.add_argument("--tls-key", help="server private key, PEM (SCHEDKIT_TLS_KEY)")
    parser.add_argument(
        "--tls-ca", help="require client certificates signed by this CA: mTLS (SCHEDKIT_TLS_CA)"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow a non-loopback --listen without token or mTLS (SCHEDKIT_INSECURE)",
    )
    parser.add_argument(
        "--handoff-window",
        type=float,
        help="seconds before run time to hand off (SCHEDKIT_HANDOFF_WINDOW)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        dest="server_processes",
        help="gRPC server processes sharing the port, up to one per core "
        "(SCHEDKIT_SERVER_PROCESSES; default 1)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="schedkit", description="Schedule Celery tasks at a time."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, help="text (key=value) or json (SCHEDKIT_LOG_FORMAT)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run the whole stack until Ctrl-C")
    _common(up)
    _serving(up)
    up.add_argument("--data-dir", type=Path, help="embedded Redis data folder (SCHEDKIT_DATA_DIR)")
    up.add_argument("--no-worker", action="store_true", help="do not start a Celery worker")
    up.add_argument("--concurrency", type=int, dest="worker_concurrency", help="worker processes")

    worker = commands.add_parser("worker", help="run a Celery worker with the schedkit hook")
    _common(worker)
    worker.add_argument("--concurrency", type=int, default=2)
    worker.add_argument("--pool", default="prefork", help="prefork, threads or solo")
    worker.add_argument(
        "--loglevel", dest="worker_loglevel", help="Celery log level (SCHEDKIT_WORKER_LOGLEVEL)"
    )

    serve = commands.add_parser("serve", help="run the gRPC server only")
    _common(serve)
    _serving(serve)

    dispatch = commands.add_parser("dispatch", help="run the dispatcher only")
    _common(dispatch)
    dispatch.add_argument("--handoff-window", type=float)
    _metrics(dispatch)
    return parser


def _settings(options: argparse.Namespace) -> Settings:
    names = (
        "app",
        "store_url",
        "broker_url",
        "listen",
        "handoff_window",
        "data_dir",
        "worker_concurrency",
        "worker_loglevel",
        "token",
        "token_file",
        "tls_cert",
        "tls_key",
        "tls_ca",
        "insecure",
        "metrics_port",
        "metrics_addr",
        "log_format",
        "server_processes",
    )
    settings = Settings.from_env(**{n: getattr(options, n, None) for n in names})
    # Refuse a broker in the store's database before anything starts (ConfigError).
    _ = settings.effective_broker_url
    return settings


def _on_signal(stop: threading.Event) -> None:
    """Set ``stop`` on SIGINT (Ctrl-C) or SIGTERM. Installed before a command says it is
    ready: a signal sent as soon as the line is read must find the handler, not Python's
    default (which ends the process without stopping the parts)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _stop_on_signal() -> threading.Event:
    """An event that SIGINT or SIGTERM sets from now on."""
    stop = threading.Event()
    _on_signal(stop)
    return stop


def _up(options: argparse.Namespace) -> None:
    settings = _settings(options)
    with Stack(settings, worker=not options.no_worker) as stack:
        stop = _stop_on_signal()
        print(
            f"schedkit is up: gRPC on {stack.address}, store {stack.settings.store_url}", flush=True
        )
        if stack.metrics is not None:
            print(
                f"metrics on http://{settings.metrics_addr}:{stack.metrics.port}/metrics",
                flush=True,
            )
        header = ' -H "authorization: Bearer $SCHEDKIT_TOKEN"' if settings.tokens() else ""
        scheme = "https" if settings.tls_cert else "http"
        print(
            "try: buf curl --protocol grpc --http2-prior-knowledge"
            f"{header} {scheme}://{stack.address}/schedkit.v1.ScheduleService/ListTaskTypes",
            flush=True,
        )
        print("Ctrl-C stops everything.", flush=True)
        stop.wait()
        print("stopping…", flush=True)


def _serve(options: argparse.Namespace) -> None:
    settings = _settings(options)
    if check_count(settings.server_processes) > 1:
        _serve_processes(settings, verbose=options.verbose)
        return
    store = connect_store(settings)
    server = build_server(settings, store).start()
    metrics = _metrics_server(settings, store)
    stop = _stop_on_signal()
    print(f"schedkit server on {server.address}", flush=True)
    stop.wait()
    server.stop(settings.shutdown_grace)
    if metrics is not None:
        metrics.stop()


def _serve_processes(settings: Settings, *, verbose: bool) -> None:
    # The parent reads metrics from the store (they are the store's), once for all children.
    metrics = _metrics_server(settings, connect_store(settings))
    level = logging.DEBUG if verbose else logging.INFO
    servers = ServerProcesses(settings, settings.server_processes, log_level=level).start()
    stop = _stop_on_signal()
    print(f"schedkit server on {servers.address} ({servers.count} processes)", flush=True)
    try:
        servers.supervise(stop)
    finally:
        servers.stop()
        if metrics is not None:
            metrics.stop()


def _dispatch(options: argparse.Namespace) -> None:
    settings = _settings(options)
    store = connect_store(settings)
    app = load_app(settings.app)
    dispatcher = Dispatcher(store, app, settings).start()
    metrics = _metrics_server(settings, store)
    stop = _stop_on_signal()
    print("schedkit dispatcher running", flush=True)
    stop.wait()
    dispatcher.stop()
    if metrics is not None:
        metrics.stop()


def _metrics_server(settings: Settings, store: Store) -> MetricsServer | None:
    if not settings.metrics_port:
        return None
    metrics = serve_metrics(store, port=settings.metrics_port, addr=settings.metrics_addr)
    print(f"metrics on http://{settings.metrics_addr}:{metrics.port}/metrics", flush=True)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``schedkit`` command. Exit 0 on success, 2 on errors."""
    options = build_parser().parse_args(argv)
    try:
        log_format = Settings.from_env(log_format=options.log_format).log_format
        configure(log_format, level=logging.DEBUG if options.verbose else logging.INFO)
        if options.command == "up":
            _up(options)
        elif options.command == "worker":
            settings = _settings(options)
            run_worker(settings, concurrency=options.concurrency, pool=options.pool)
        elif options.command == "serve":
            _serve(options)
        elif options.command == "dispatch":
            _dispatch(options)
    except SchedkitError as exc:
        print(f"schedkit: {exc}", file=sys.stderr)
        return 2
    return 0
