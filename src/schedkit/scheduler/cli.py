"""The scheduler's command line: parse the arguments into options, then run one pass or loop.

Only the arguments are handled here; :mod:`schedkit.scheduler.send` does the work, given a
:class:`~schedkit.scheduler.send.SendOptions`.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from types import FrameType

from schedkit.client.client import DEFAULT_TARGET
from schedkit.errors import SchedkitError
from schedkit.scheduler.send import (
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_USAGE,
    Credentials,
    SendOptions,
    run_once,
)
from schedkit.settings import Settings
from schedkit.timetable.options import TimetableOptions
from schedkit.timetable.read import FORMATS
from schedkit.timeutil import DST_POLICIES, PAST_POLICIES

__all__ = ["EXIT_OK", "EXIT_REJECTED", "EXIT_USAGE", "build_parser", "main", "send_options"]

EPILOG = """\
timetable columns (names are case-insensitive):
  task           Celery task name (required; alias task_name)
  run_at         ISO 8601 time, e.g. 2026-01-20 08:00 or 2026-01-20T08:00:00+01:00
                 (required; alias schedule_time; may be empty on a cron row = now)
  args           JSON list, e.g. "[1, 2]" (quote it in CSV)          default []
  kwargs         JSON object, e.g. "{""litres"": 2}"                  default {}
  tz             IANA zone of a naive run_at/until, e.g. Europe/Paris  default --tz
  key            idempotency key                  default: derived from content and time
  queue, priority (0-255), expires_after (30min, 1h or seconds)
  labels         JSON object of strings; or one label.<name> column per label
  every          pandas offset: 15min, 2h, 1D, 1W, MS        } recurring rows, expanded
  cron           cron expression: "0 8 * * mon-fri"          } within --horizon
  until, count   end of a recurrence (inclusive time) / most runs from run_at

formats by extension: .csv (default; "-" reads stdin), .parquet, .jsonl/.ndjson,
  .xlsx/.xls/.ods (needs openpyxl); --format overrides.

row numbers count data rows from 1, the first row after the header, so row N is line
N+1 of a CSV file (when no quoted cell spans lines); blank rows are counted and ignored.

exit codes:
  0  every row accepted (created or already scheduled; past runs skipped are fine)
  1  some rows were bad or rejected (the others were scheduled; see the summary)
  2  usage error, unreadable timetable, or the server unreachable after --retry-for

examples:
  python -m schedkit.scheduler examples/timetable.csv --dry-run
  python -m schedkit.scheduler timetable.csv --tz Europe/Paris --output results.csv
  python -m schedkit.scheduler timetable.csv --sync --every 5m
"""


def duration(text: str) -> timedelta:
    """``90s``, ``5m``, ``2h``, ``7d``, ``1w``, ``500ms`` or plain seconds, as a timedelta."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d|w)?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30s, 5m, 2h, 7d")
    number, unit = float(match.group(1)), match.group(2) or "s"
    seconds = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
    return timedelta(seconds=number * seconds[unit])


def add_client_security(parser: argparse.ArgumentParser) -> None:
    """--token, --token-file and --tls-* flags, named as the server's settings are."""
    parser.add_argument("--token", help="bearer token to send (SCHEDKIT_TOKEN)")
    parser.add_argument(
        "--token-file", help="file whose first line is the token (SCHEDKIT_TOKEN_FILE)"
    )
    parser.add_argument(
        "--tls-ca",
        help="PEM CA that signed the server's certificate; turns TLS on (SCHEDKIT_TLS_CA)",
    )
    parser.add_argument("--tls-cert", help="client certificate for mTLS (PEM)")
    parser.add_argument("--tls-key", help="key of --tls-cert (PEM)")
    parser.add_argument(
        "--tls", action="store_true", help="use TLS, trusting the system's CA roots"
    )


def build_parser() -> argparse.ArgumentParser:
    """The scheduler's argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m schedkit.scheduler",
        description="Check a timetable and schedule its tasks on a schedkit server. Safe to "
        "re-run: each task has an idempotency key, so nothing is created twice.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("timetable", help="timetable file, or - for CSV on stdin")
    parser.add_argument(
        "--server",
        default=os.environ.get("SCHEDKIT_SERVER") or DEFAULT_TARGET,
        help=f"host:port of the schedkit server (SCHEDKIT_SERVER, default {DEFAULT_TARGET})",
    )
    add_client_security(parser)
    parser.add_argument(
        "--format", choices=sorted(set(FORMATS.values())), help="override the file extension"
    )
    parser.add_argument(
        "--tz",
        default=None,
        help="zone of naive times on rows without a tz cell, e.g. Europe/Paris; --tz UTC if "
        "UTC is meant. Without it such a row is refused, never read as UTC",
    )
    parser.add_argument(
        "--dst",
        choices=DST_POLICIES,
        default="raise",
        help="a local time in a DST gap or overlap: raise (a row error, default), shift, "
        "earliest or latest",
    )
    parser.add_argument(
        "--past",
        choices=PAST_POLICIES,
        default="skip",
        help="runs before now: skip (default, counted), run (send: at their time if "
        "within the server's past tolerance, else now), error (row errors)",
    )
    parser.add_argument(
        "--horizon",
        type=duration,
        default=timedelta(days=7),
        help="expand recurring rows this far ahead (default 7d)",
    )
    parser.add_argument(
        "--source",
        help="name of this timetable, stored as the 'source' label (default: the file name)",
    )
    parser.add_argument(
        "--recurring",
        choices=("expand", "server"),
        default="expand",
        help="recurring rows: expand into runs within --horizon (default), or create "
        "server-side schedules that run for ever (docs/schedules.md)",
    )
    _add_sending_flags(parser)
    return parser


def _add_sending_flags(parser: argparse.ArgumentParser) -> None:
    """What to do with the checked runs, and how hard to try."""
    parser.add_argument(
        "--sync",
        action="store_true",
        help="make the server match the timetable: cancel scheduled tasks of this source "
        "that are no longer in it",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="check and expand, print the plan, send nothing"
    )
    parser.add_argument("--output", type=Path, help="write the outcome of every row to this CSV")
    parser.add_argument(
        "--every", type=duration, help="keep running: re-read and re-send on this period"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--retry-for",
        type=duration,
        default=timedelta(seconds=60),
        help="keep retrying an unreachable server this long before exit 2 (default 60s)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=duration,
        default=timedelta(seconds=60),
        help="give up on a stream whose server answers no batch this long, then retry as for "
        "an unreachable server (default 60s)",
    )
    parser.add_argument("--batch-size", type=int, default=1000, help="tasks per message")
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=4,
        help="batches sent but not yet answered (bounds memory; default 4)",
    )


def send_options(args: argparse.Namespace) -> SendOptions:
    """The options of one pass, from parsed arguments (the environment gives the server's
    past tolerance)."""
    if args.source:
        source = str(args.source)
    else:
        source = "stdin" if args.timetable == "-" else Path(args.timetable).name
    table = TimetableOptions(
        tz=args.tz,
        dst=args.dst,
        past=args.past,
        horizon=args.horizon,
        source=source,
        recurring=args.recurring,
        past_tolerance=timedelta(seconds=Settings.from_env().past_tolerance),
        format=args.format,
    )
    credentials = Credentials(
        token=args.token,
        token_file=args.token_file,
        tls=args.tls,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    return SendOptions(
        timetable=args.timetable,
        table=table,
        server=args.server,
        credentials=credentials,
        sync=args.sync,
        dry_run=args.dry_run,
        output=args.output,
        quiet=args.quiet,
        retry_for=args.retry_for,
        stall_timeout=args.stall_timeout,
        batch_size=args.batch_size,
        max_in_flight=args.max_in_flight,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit 0 all accepted, 1 some rows rejected, 2 usage or connection error."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits; callers of main() get the code instead
        return int(exc.code or 0)
    if args.batch_size < 1 or args.max_in_flight < 1:
        print("scheduler: --batch-size and --max-in-flight must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        options = send_options(args)
    except SchedkitError as exc:
        return _usage_error(exc)
    if args.every is None:
        return _guarded(options)
    return _loop(options, args.every)


def _usage_error(exc: SchedkitError) -> int:
    print(f"scheduler: {exc.message}", file=sys.stderr)
    for violation in exc.violations[1:]:
        print(f"  {violation.field}: {violation.description}", file=sys.stderr)
    return EXIT_USAGE


def _guarded(options: SendOptions) -> int:
    try:
        return run_once(options, sys.stdout, sys.stderr)
    except SchedkitError as exc:
        return _usage_error(exc)


def _loop(options: SendOptions, every: timedelta) -> int:
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():

        def handler(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
    period = every.total_seconds()
    code = EXIT_OK
    while not stop.is_set():
        started = time.monotonic()
        code = _guarded(options)
        print(f"next pass in {period:g}s (Ctrl-C stops)", file=sys.stdout, flush=True)
        sys.stdout.flush()
        stop.wait(max(0.0, period - (time.monotonic() - started)))
    return code
