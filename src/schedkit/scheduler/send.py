"""``python -m schedkit.scheduler timetable.csv``: check a timetable and stream it to the server.

Safe to re-run (from cron, by hand, or with ``--every``): every run carries an idempotency
key, so a row already scheduled is reported as such and never created twice.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import IO, Any

import grpc
import numpy as np
import pandas as pd
from tqdm import tqdm

from schedkit.client.client import DEFAULT_TARGET, Client
from schedkit.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    SchedkitError,
    Unavailable,
)
from schedkit.model import Outcome, ScheduleResult, TaskState, task_id_for
from schedkit.settings import Settings
from schedkit.timetable.batches import column_batches
from schedkit.timetable.table import (
    FORMATS,
    RECURRING_KEY_PREFIX,
    SOURCE_LABEL,
    Timetable,
    load_timetable,
)
from schedkit.timeutil import DST_POLICIES, PAST_POLICIES

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2
# Server-side field names of a TaskSpec, as timetable columns.
COLUMN_OF_FIELD = {
    "task": "task",
    "run_time": "run_at",
    "args": "args",
    "kwargs": "kwargs",
    "idempotency_key": "key",
    "queue": "queue",
    "priority": "priority",
    "expires_after": "expires_after",
    "labels": "labels",
    "columns.run_time_micros": "run_at",
    "columns.idempotency_keys": "key",
}
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
CANCELLABLE = (TaskState.SCHEDULED, TaskState.QUEUED)
PLAN_LINES = 20
_USER_RECURRING_KEY = re.compile(r"@\d{8}T\d{6}Z$")

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


def client_options(options: argparse.Namespace) -> dict[str, Any]:
    """Client.connect keyword arguments from the security flags (the environment fills gaps)."""
    if options.token:
        token = options.token
    else:
        given = Settings(token_file=options.token_file) if options.token_file else None
        tokens = (given or Settings.from_env()).tokens()
        token = tokens[0] if tokens else ""
    return {
        "token": token,
        "tls": True if options.tls or options.tls_ca or options.tls_cert else None,
        "tls_ca": options.tls_ca,
        "tls_cert": options.tls_cert,
        "tls_key": options.tls_key,
    }


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
    parser.add_argument("--tz", default="UTC", help="zone of naive times (default UTC)")
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
    return parser


@dataclass
class Report:
    """What one pass did, per run and in total."""

    outcomes: list[str]
    task_ids: list[str]
    columns: list[str]
    reasons: list[str]
    cancelled: list[tuple[str, str]] = field(default_factory=list)  # (task id, why kept/none)
    sync_note: str = ""
    sync_failures: int = 0

    @classmethod
    def empty(cls, size: int) -> Report:
        """A report of ``size`` runs with nothing known yet."""
        return cls([""] * size, [""] * size, [""] * size, [""] * size)


def column_and_reason(error: Exception | None) -> tuple[str, str]:
    """The timetable column a refusal names (or '') and the reason without the field path."""
    if isinstance(error, SchedkitError) and error.violations:
        violation = error.violations[0]
        # specs[3].args, columns.templates[0].args, columns.run_time_micros[7], args
        name = re.sub(r"^(specs|columns\.templates)\[\d+\]\.|\[\d+\]$", "", violation.field)
        name = COLUMN_OF_FIELD.get(name, COLUMN_OF_FIELD.get(re.split(r"[\[.]", name)[0], name))
        # The server's message repeats its own field path; the row and column replace it.
        return name, violation.description.removeprefix(f"{violation.field}: ")
    return "", str(error) if error else ""


class Sender:
    """Streams runs to the server, retrying a lost connection for a bounded time."""

    def __init__(
        self,
        options: argparse.Namespace,
        connect: Callable[[], Client],
        progress: tqdm[Any] | None,
        err: IO[str],
    ) -> None:
        self.options = options
        self.connect = connect
        self.progress = progress
        self.err = err

    def send(self, table: Timetable, report: Report) -> None:
        """Fill ``report`` with the outcome of every run; Unavailable when retries run out."""
        runs = table.runs
        moved = runs["moved_to_now"].to_numpy(dtype=bool)
        done = 0
        deadline: float | None = None
        pause = 0.2
        while done < len(runs):
            try:
                with self.connect() as client:
                    results = client.schedule_batches(
                        column_batches(runs, done, self.options.batch_size),
                        max_in_flight=self.options.max_in_flight,
                        stall_timeout=self.options.stall_timeout.total_seconds(),
                    )
                    for result in results:
                        self._record(report, done, result, runs, moved)
                        done += 1
                        deadline, pause = None, 0.2  # progress: the retry budget starts again
                        if self.progress is not None and done % 500 == 0:
                            self.progress.update(500)
            except SchedkitError as exc:
                if exc.code not in RETRYABLE and not isinstance(exc, Unavailable):
                    raise
                now = time.monotonic()
                deadline = deadline or now + self.options.retry_for.total_seconds()
                if now >= deadline:
                    raise Unavailable(
                        f"the server at {self.options.server} is unreachable "
                        f"({exc.message}); gave up after "
                        f"{self.options.retry_for.total_seconds():g}s with {done} of "
                        f"{len(runs)} runs answered. Re-run when it is back: keys make "
                        "re-sending safe."
                    ) from exc
                print(
                    f"server unavailable ({exc.message}); retrying in {pause:.1f}s",
                    file=self.err,
                )
                time.sleep(min(pause, max(0.0, deadline - now)))
                pause = min(pause * 2, 5.0)
        if self.progress is not None:
            self.progress.update(len(runs) - self.progress.n)

    @staticmethod
    def _record(
        report: Report,
        index: int,
        result: ScheduleResult,
        runs: pd.DataFrame,
        moved: np.ndarray[Any, Any],
    ) -> None:
        if result.outcome is Outcome.REJECTED:
            if isinstance(result.error, AlreadyExists) and moved[index]:
                # Moved to now on an earlier pass too: same key, only the time differs.
                report.outcomes[index] = "existing"
                report.task_ids[index] = task_id_for(str(runs["key"].iat[index]))
                return
            column, reason = column_and_reason(result.error)
            report.outcomes[index] = "rejected"
            report.columns[index] = column
            report.reasons[index] = reason
            return
        report.outcomes[index] = "created" if result.outcome is Outcome.CREATED else "existing"
        report.task_ids[index] = result.id


def _is_beyond_horizon_run(key: str, run_at: datetime, horizon_end: pd.Timestamp) -> bool:
    # A recurrence run scheduled by an earlier pass with a longer horizon: not ours to judge.
    recurring = key.startswith(RECURRING_KEY_PREFIX) or bool(_USER_RECURRING_KEY.search(key))
    return recurring and run_at >= horizon_end


def stale_tasks(client: Client, table: Timetable, source: str) -> list[Any]:
    """Scheduled tasks of ``source`` that the timetable no longer has."""
    wanted = {task_id_for(k) for k in table.runs["key"]}
    wanted |= {task_id_for(k) for k in table.past["key"]}
    return [
        task
        for task in client.tasks(states=CANCELLABLE, labels={SOURCE_LABEL: source})
        if task.id not in wanted
        and not _is_beyond_horizon_run(task.spec.key, task.spec.run_at, table.horizon_end)
    ]


def _source_of(options: argparse.Namespace) -> str:
    if options.source:
        return str(options.source)
    return "stdin" if options.timetable == "-" else Path(options.timetable).name


def _fmt_time(value: Any) -> str:
    return pd.Timestamp(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_plan(marks: Sequence[str], table: Timetable, stale: Sequence[Any], out: IO[str]) -> None:
    runs = table.runs
    for mark in ("+", "="):
        where = [i for i, m in enumerate(marks) if m == mark]
        for i in where[:PLAN_LINES]:
            print(
                f"  {mark} row {runs['row'].iat[i]:<6} {_fmt_time(runs['run_at'].iat[i])}  "
                f"{runs['task'].iat[i]}  key {runs['key'].iat[i]}",
                file=out,
            )
        if len(where) > PLAN_LINES:
            print(f"  {mark} … and {len(where) - PLAN_LINES:,} more", file=out)
    for task in stale[:PLAN_LINES]:
        print(
            f"  - {'':10} {_fmt_time(task.spec.run_at)}  {task.spec.task}  id {task.id}",
            file=out,
        )
    if len(stale) > PLAN_LINES:
        print(f"  - … and {len(stale) - PLAN_LINES:,} more", file=out)


def run_once(options: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """One pass: read, check, send (or plan), sync, summarise. Returns the exit code."""
    source = _source_of(options)
    settings = Settings.from_env()
    table = load_timetable(
        options.timetable,
        format=options.format,
        tz=options.tz,
        dst=options.dst,
        past=options.past,
        horizon=options.horizon,
        source=source,
        past_tolerance=timedelta(seconds=settings.past_tolerance),
    )
    horizon = f"{options.horizon.total_seconds() / 86400:g}d"
    print(
        f"schedkit scheduler: {options.timetable} (source {source!r}) -> {options.server}\n"
        f"  naive times read in {options.tz} (--tz) unless the row has tz; DST gaps and "
        f"overlaps: {options.dst} (--dst)\n"
        f"  past runs: {options.past} (--past); recurring rows expanded up to "
        f"{_fmt_time(table.horizon_end)} (--horizon {horizon})\n"
        f"  {table.rows:,} rows read, {len(table.runs):,} runs to send, "
        f"{len(table.past):,} in the past, {len(table.bad_rows):,} bad rows",
        file=out,
    )
    for warning in table.warnings:
        print(f"warning: {warning}", file=err)
    report = Report.empty(len(table.runs))

    security = client_options(options)

    def connect() -> Client:
        return Client.connect(
            options.server,
            wait_ready=min(5.0, max(0.5, options.retry_for.total_seconds())),
            **security,
        )

    if options.dry_run:
        marks = ["+"] * len(table.runs)
        stale: list[Any] = []
        if options.sync:
            with _RetryingConnect(connect, options) as client:
                have = {t.id for t in client.tasks(labels={SOURCE_LABEL: source})}
                marks = ["=" if task_id_for(k) in have else "+" for k in table.runs["key"]]
                stale = stale_tasks(client, table, source)
        print("plan (dry run, nothing sent):", file=out)
        _print_plan(marks, table, stale, out)
        _summary(table, report, out, dry=(marks, stale))
        _write_output(options.output, table, report)
        return EXIT_REJECTED if table.errors else EXIT_OK

    progress = tqdm(
        total=len(table.runs),
        unit="row",
        unit_scale=True,
        file=err,
        disable=options.quiet or not err.isatty() or not len(table.runs),
        dynamic_ncols=True,
    )
    started = time.monotonic()
    with progress:
        Sender(options, connect, progress, err).send(table, report)
    elapsed = max(time.monotonic() - started, 1e-9)
    print(
        f"sent {len(table.runs):,} runs in {elapsed:.1f}s "
        f"({len(table.runs) / elapsed:,.0f} rows/s)",
        file=out,
    )
    if options.sync:
        _sync(options, connect, table, report, source, out)
    _summary(table, report, out)
    _write_output(options.output, table, report)
    rejected = "rejected" in report.outcomes
    return EXIT_REJECTED if table.errors or rejected or report.sync_failures else EXIT_OK


class _RetryingConnect:
    """Connect, retrying an unreachable server for --retry-for."""

    def __init__(self, connect: Callable[[], Client], options: argparse.Namespace) -> None:
        self.connect = connect
        self.options = options
        self.client: Client | None = None

    def __enter__(self) -> Client:
        deadline = time.monotonic() + self.options.retry_for.total_seconds()
        while True:
            try:
                self.client = self.connect()
                return self.client
            except Unavailable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()


def _sync(
    options: argparse.Namespace,
    connect: Callable[[], Client],
    table: Timetable,
    report: Report,
    source: str,
    out: IO[str],
) -> None:
    if table.errors or "rejected" in report.outcomes:
        # A bad row's old task may be what the user still wants: cancel nothing until fixed.
        report.sync_note = "sync skipped: fix the bad rows first, nothing was cancelled"
        return
    with _RetryingConnect(connect, options) as client:
        stale = stale_tasks(client, table, source)
        for task in stale:
            try:
                client.cancel(task.id)
                report.cancelled.append((task.id, ""))
            except (FailedPrecondition, NotFound) as exc:
                report.cancelled.append((task.id, f"not cancelled: {exc.message}"))
                report.sync_failures += 1
    marks = ["+" if o == "created" else "=" for o in report.outcomes]
    print("plan (sync):", file=out)
    _print_plan(marks, table, stale, out)


def _summary(
    table: Timetable,
    report: Report,
    out: IO[str],
    dry: tuple[Sequence[str], Sequence[Any]] | None = None,
) -> None:
    counts = Counter(report.outcomes)
    print("summary:", file=out)
    if dry is not None:
        marks = Counter(dry[0])
        print(f"  would create        {marks['+']:>10,}", file=out)
        print(f"  already scheduled   {marks['=']:>10,}", file=out)
        print(f"  would cancel        {len(dry[1]):>10,}", file=out)
    else:
        print(f"  created             {counts['created']:>10,}", file=out)
        print(f"  already scheduled   {counts['existing']:>10,}", file=out)
    rejected = [i for i, o in enumerate(report.outcomes) if o == "rejected"]
    print(f"  rejected            {len(table.errors) + len(rejected):>10,}", file=out)
    print(
        f"  skipped (past)      {len(table.past):>10,}   (--past skip: runs before now are "
        "not sent)",
        file=out,
    )
    if dry is None and (report.cancelled or report.sync_note):
        done = sum(1 for _, why in report.cancelled if not why)
        print(f"  cancelled (sync)    {done:>10,}", file=out)
    if report.sync_note:
        print(f"  {report.sync_note}", file=out)
    lines = [str(e) for e in table.errors]
    runs = table.runs
    lines += [
        f"row {runs['row'].iat[i]}, {report.columns[i] or '(row)'}: {report.reasons[i]}"
        for i in rejected
    ]
    lines += [f"task {task_id}: {why}" for task_id, why in report.cancelled if why]
    if lines:
        print("problems:", file=out)
        for line in lines[:100]:
            print(f"  {line}", file=out)
        if len(lines) > 100:
            print(f"  … and {len(lines) - 100:,} more (see --output)", file=out)


def _write_output(path: Path | None, table: Timetable, report: Report) -> None:
    if path is None:
        return
    runs = table.runs
    parts = [
        pd.DataFrame(
            {
                "row": runs["row"],
                "run_at": runs["run_at"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "task": runs["task"],
                "key": runs["key"],
                "task_id": report.task_ids,
                "outcome": [o or "planned" for o in report.outcomes],
                "column": report.columns,
                "reason": report.reasons,
            }
        ),
        pd.DataFrame(
            {
                "row": table.past["row"],
                "run_at": table.past["run_at"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                "task": table.past["task"],
                "key": table.past["key"],
                "task_id": [task_id_for(k) for k in table.past["key"]],
                "outcome": "skipped_past",
                "column": "run_at",
                "reason": "in the past (--past skip)",
            }
        ),
        pd.DataFrame(
            {
                "row": [e.row for e in table.errors],
                "outcome": "invalid",
                "column": [e.column for e in table.errors],
                "reason": [e.message for e in table.errors],
            }
        ),
        pd.DataFrame(
            {
                "task_id": [task_id for task_id, _ in report.cancelled],
                "outcome": [
                    "cancelled" if not why else "cancel_failed" for _, why in report.cancelled
                ],
                "reason": [why for _, why in report.cancelled],
            }
        ),
    ]
    frame = pd.concat([p for p in parts if len(p)], ignore_index=True)
    if not len(frame):
        frame = pd.DataFrame(columns=list(parts[0].columns))
    frame["row"] = frame["row"].astype("Int64")
    frame.sort_values("row", kind="stable", na_position="last").to_csv(path, index=False)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: exit 0 all accepted, 1 some rows rejected, 2 usage or connection error."""
    parser = build_parser()
    try:
        options = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits; callers of main() get the code instead
        return int(exc.code or 0)
    if options.batch_size < 1 or options.max_in_flight < 1:
        print("scheduler: --batch-size and --max-in-flight must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if options.every is None:
        return _guarded(options)
    return _loop(options)


def _guarded(options: argparse.Namespace) -> int:
    try:
        return run_once(options, sys.stdout, sys.stderr)
    except SchedkitError as exc:
        print(f"scheduler: {exc.message}", file=sys.stderr)
        for violation in exc.violations[1:]:
            print(f"  {violation.field}: {violation.description}", file=sys.stderr)
        return EXIT_USAGE


def _loop(options: argparse.Namespace) -> int:
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():

        def handler(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
    period = options.every.total_seconds()
    code = EXIT_OK
    while not stop.is_set():
        started = time.monotonic()
        code = _guarded(options)
        print(f"next pass in {period:g}s (Ctrl-C stops)", file=sys.stdout, flush=True)
        sys.stdout.flush()
        stop.wait(max(0.0, period - (time.monotonic() - started)))
    return code


if __name__ == "__main__":
    sys.exit(main())
