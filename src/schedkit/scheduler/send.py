"""One pass of the scheduler: read and check a timetable, stream its runs to the server
(retrying a lost connection for ``--retry-for``), optionally sync, then report.

Everything here takes a :class:`SendOptions`; :mod:`schedkit.scheduler.cli` builds it from the
command line.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import grpc
import pandas as pd
from tqdm import tqdm

from schedkit.backoff import Backoff
from schedkit.client.client import DEFAULT_TARGET, Client
from schedkit.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    SchedkitError,
    Unavailable,
)
from schedkit.model import TaskState, task_id_for
from schedkit.recurring import SCHEDULE_LABEL
from schedkit.scheduler.moves import changes_of, move_conflicts
from schedkit.settings import Settings
from schedkit.timetable.batches import column_batches
from schedkit.timetable.check import load_timetable
from schedkit.timetable.options import TimetableOptions
from schedkit.timetable.outcomes import OUTCOME_COLUMNS, RunOutcomes, outcome_rows
from schedkit.timetable.schema import RECURRING_KEY_PREFIX, SOURCE_LABEL, Timetable

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2
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
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass(frozen=True)
class Credentials:
    """The security flags as given; the environment fills the gaps on each connect, so a
    rotated token file is read again by the next pass of ``--every``."""

    token: str | None = None
    token_file: str | None = None
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def connect_kwargs(self) -> dict[str, Any]:
        """Client.connect keyword arguments (the environment fills what the flags leave out)."""
        if self.token:
            token = self.token
        else:
            given = Settings(token_file=self.token_file) if self.token_file else None
            tokens = (given or Settings.from_env()).tokens()
            token = tokens[0] if tokens else ""
        return {
            "token": token,
            "tls": True if self.tls or self.tls_ca or self.tls_cert else None,
            "tls_ca": self.tls_ca,
            "tls_cert": self.tls_cert,
            "tls_key": self.tls_key,
        }


@dataclass(frozen=True)
class SendOptions:
    """One pass of the scheduler: the timetable, how to read it, where and how to send it."""

    timetable: str  # a path, or "-" for CSV on stdin
    table: TimetableOptions  # its source label already chosen
    server: str = DEFAULT_TARGET
    credentials: Credentials = field(default_factory=Credentials)
    sync: bool = False
    dry_run: bool = False
    output: Path | None = None
    quiet: bool = False
    retry_for: timedelta = timedelta(seconds=60)
    stall_timeout: timedelta = timedelta(seconds=60)
    batch_size: int = 1000
    max_in_flight: int = 4


@dataclass
class Report:
    """What one pass did, per run and in total."""

    runs: RunOutcomes
    cancelled: list[tuple[str, str]] = field(default_factory=list)  # (task id, why kept/none)
    # Runs refused because their key already has a task with other content: --sync moves them.
    conflicts: list[int] = field(default_factory=list)
    moved: int = 0
    sync_note: str = ""
    sync_failures: int = 0

    @classmethod
    def empty(cls, size: int) -> Report:
        """A report of ``size`` runs with nothing known yet."""
        return cls(RunOutcomes.empty(size))


class Sender:
    """Streams runs to the server, retrying a lost connection for a bounded time."""

    def __init__(
        self,
        options: SendOptions,
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
        keys = runs["key"].tolist()
        moved = runs["moved_to_now"].tolist()
        retry_for = self.options.retry_for.total_seconds()
        # A stream that fails again waits 0.2 s, 0.4 s, ... at most 5 s, for --retry-for.
        backoff = Backoff(first=0.2, factor=2.0, cap=5.0, give_up_after=retry_for)
        done = 0
        while done < len(runs):
            resumed_at = done  # the first run this connection answers
            try:
                with self.connect() as client:
                    results = client.schedule_batches(
                        column_batches(runs, done, self.options.batch_size),
                        max_in_flight=self.options.max_in_flight,
                        stall_timeout=self.options.stall_timeout.total_seconds(),
                    )
                    for result in results:
                        report.runs.record(done, result, str(keys[done]), bool(moved[done]))
                        if report.runs.outcome[done] == "rejected" and isinstance(
                            result.error, AlreadyExists
                        ):
                            report.conflicts.append(done)
                        done += 1
                        if done == resumed_at + 1:
                            backoff.succeeded()  # progress: the retry budget starts again
                        if self.progress is not None and done % 500 == 0:
                            self.progress.update(500)
            except SchedkitError as exc:
                if exc.code not in RETRYABLE and not isinstance(exc, Unavailable):
                    raise
                wait = backoff.failed()
                if backoff.expired:
                    raise Unavailable(
                        f"the server at {self.options.server} is unreachable "
                        f"({exc.message}); gave up after {retry_for:g}s with {done} of "
                        f"{len(runs)} runs answered. Re-run when it is back: keys make "
                        "re-sending safe."
                    ) from exc
                print(f"server unavailable ({exc.message}); retrying in {wait:.1f}s", file=self.err)
                time.sleep(wait)
        if self.progress is not None:
            self.progress.update(len(runs) - self.progress.n)


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
        and SCHEDULE_LABEL not in task.spec.labels  # a server-side schedule's run: its own
        and not _is_beyond_horizon_run(task.spec.key, task.spec.run_at, table.horizon_end)
    ]


def _fmt_time(value: Any) -> str:
    return pd.Timestamp(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_plan(marks: Sequence[str], table: Timetable, stale: Sequence[Any], out: IO[str]) -> None:
    runs = table.runs
    for mark in ("+", "~", "=", "!"):
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


def run_once(options: SendOptions, out: IO[str], err: IO[str]) -> int:
    """One pass: read, check, send (or plan), sync, summarise. Returns the exit code."""
    table = load_timetable(options.timetable, options.table)
    _print_header(options, table, out)
    for warning in table.warnings:
        print(f"warning: {warning}", file=err)
    report = Report.empty(len(table.runs))
    security = options.credentials.connect_kwargs()

    def connect() -> Client:
        return Client.connect(
            options.server,
            wait_ready=min(5.0, max(0.5, options.retry_for.total_seconds())),
            **security,
        )

    if options.dry_run:
        _dry_run(options, connect, table, report, out)
        return EXIT_REJECTED if table.errors else EXIT_OK
    _send(options, connect, table, report, out, err)
    failed_schedules = _create_schedules(connect, table, out, err)
    if options.sync:
        _sync(options, connect, table, report, out)
    _summary(table, report, out)
    _write_output(options.output, table, report)
    rejected = bool(report.runs.rejected())
    failed = table.errors or rejected or report.sync_failures or failed_schedules
    return EXIT_REJECTED if failed else EXIT_OK


def _create_schedules(
    connect: Callable[[], Client], table: Timetable, out: IO[str], err: IO[str]
) -> int:
    """With --recurring server: create each recurring row's schedule; how many failed."""
    if not table.schedules:
        return 0
    outcomes: dict[str, int] = {}
    failed = 0
    with connect() as client:
        for schedule_id, definition in table.schedules:
            try:
                outcome = client.create_schedule_def(schedule_id, definition).outcome
            except SchedkitError as exc:
                print(f"schedule {schedule_id}: {exc}", file=err)
                failed += 1
                continue
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    made = ", ".join(f"{n} {outcome.lower()}" for outcome, n in sorted(outcomes.items()))
    print(
        f"server-side schedules: {made or 'none'}" + (f", {failed} refused" if failed else ""),
        file=out,
    )
    return failed


def _print_header(options: SendOptions, table: Timetable, out: IO[str]) -> None:
    # Says which reading of the cells applied: a naive time means nothing without it.
    read = options.table
    horizon = f"{read.horizon.total_seconds() / 86400:g}d"
    print(
        f"schedkit scheduler: {options.timetable} (source {read.source!r}) -> {options.server}\n"
        f"  {_naive_rule(read.tz)}; DST gaps and "
        f"overlaps: {read.dst} (--dst)\n"
        f"  past runs: {read.past} (--past); recurring rows expanded up to "
        f"{_fmt_time(table.horizon_end)} (--horizon {horizon})\n"
        f"  {table.rows:,} rows read, {len(table.runs):,} runs to send, "
        f"{len(table.past):,} in the past, {len(table.bad_rows):,} bad rows",
        file=out,
    )


def _dry_run(
    options: SendOptions,
    connect: Callable[[], Client],
    table: Timetable,
    report: Report,
    out: IO[str],
) -> None:
    """Print the plan and send nothing; with --sync, ask the server what would change."""
    source = options.table.source
    marks = ["+"] * len(table.runs)
    stale: list[Any] = []
    if options.sync:
        with _RetryingConnect(connect, options.retry_for) as client:
            have = {t.id: t.spec for t in client.tasks(labels={SOURCE_LABEL: source})}
            marks = [_dry_mark(i, table.runs, have) for i in range(len(table.runs))]
            stale = stale_tasks(client, table, source)
    print("plan (dry run, nothing sent):", file=out)
    _print_plan(marks, table, stale, out)
    _summary(table, report, out, dry=(marks, stale))
    _write_output(options.output, table, report)


def _dry_mark(index: int, runs: pd.DataFrame, have: dict[str, Any]) -> str:
    """'+' new, '=' unchanged, '~' moved by --sync, '!' a conflict it cannot move."""
    current = have.get(task_id_for(str(runs["key"].iat[index])))
    if current is None:
        return "+"
    change = changes_of(runs.iloc[index], current)
    return "!" if change.fixed else "~" if change.changes else "="


def _send(
    options: SendOptions,
    connect: Callable[[], Client],
    table: Timetable,
    report: Report,
    out: IO[str],
    err: IO[str],
) -> None:
    """Send every run with a progress bar (on a terminal), then say how fast it went."""
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


class _RetryingConnect:
    """Connect, retrying an unreachable server for --retry-for."""

    def __init__(self, connect: Callable[[], Client], retry_for: timedelta) -> None:
        self.connect = connect
        self.retry_for = retry_for
        self.client: Client | None = None

    def __enter__(self) -> Client:
        # A connect already waits for the channel (wait_ready): retry at a steady 0.5 s.
        backoff = Backoff(
            first=0.5, factor=1.0, cap=0.5, give_up_after=self.retry_for.total_seconds()
        )
        while True:
            try:
                self.client = self.connect()
                return self.client
            except Unavailable:
                wait = backoff.failed()
                if backoff.expired:
                    raise
                time.sleep(wait)

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()


def _sync(
    options: SendOptions,
    connect: Callable[[], Client],
    table: Timetable,
    report: Report,
    out: IO[str],
) -> None:
    with _RetryingConnect(connect, options.retry_for) as client:
        if report.conflicts:
            report.moved = move_conflicts(client, table.runs, report.runs, report.conflicts)
        if table.errors or report.runs.rejected():
            # A bad row's old task may be what the user still wants: cancel nothing until fixed.
            report.sync_note = "sync skipped: fix the bad rows first, nothing was cancelled"
            return
        stale = stale_tasks(client, table, options.table.source)
        for task in stale:
            try:
                client.cancel(task.id)
                report.cancelled.append((task.id, ""))
            except (FailedPrecondition, NotFound) as exc:
                report.cancelled.append((task.id, f"not cancelled: {exc.message}"))
                report.sync_failures += 1
    marks = [_SYNC_MARKS.get(o, "=") for o in report.runs.outcome]
    print("plan (sync):", file=out)
    _print_plan(marks, table, stale, out)


_SYNC_MARKS = {"created": "+", "moved": "~"}


def _summary(
    table: Timetable,
    report: Report,
    out: IO[str],
    dry: tuple[Sequence[str], Sequence[Any]] | None = None,
) -> None:
    counts = Counter(report.runs.outcome)
    print("summary:", file=out)
    if dry is not None:
        marks = Counter(dry[0])
        print(f"  would create        {marks['+']:>10,}", file=out)
        print(f"  already scheduled   {marks['=']:>10,}", file=out)
        if marks["~"] or marks["!"]:
            print(f"  would move          {marks['~']:>10,}", file=out)
            print(f"  would conflict      {marks['!']:>10,}", file=out)
        print(f"  would cancel        {len(dry[1]):>10,}", file=out)
    else:
        print(f"  created             {counts['created']:>10,}", file=out)
        print(f"  already scheduled   {counts['existing']:>10,}", file=out)
        if counts["moved"]:
            print(f"  moved (sync)        {counts['moved']:>10,}", file=out)
    rejected = report.runs.rejected()
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
    _print_problems(table, report, rejected, out)


def _print_problems(table: Timetable, report: Report, rejected: list[int], out: IO[str]) -> None:
    lines = [str(e) for e in table.errors]
    rows, runs = table.runs["row"], report.runs
    lines += [f"row {rows.iat[i]}, {runs.column[i] or '(row)'}: {runs.error[i]}" for i in rejected]
    lines += [f"task {task_id}: {why}" for task_id, why in report.cancelled if why]
    if lines:
        print("problems:", file=out)
        for line in lines[:100]:
            print(f"  {line}", file=out)
        if len(lines) > 100:
            print(f"  … and {len(lines) - 100:,} more (see --output)", file=out)


#: Columns of the --output file: the run, then what became of it.
OUTPUT_COLUMNS = ("row", "run_at", "task", "key", *OUTCOME_COLUMNS)


def _write_output(path: Path | None, table: Timetable, report: Report) -> None:
    """The --output CSV: one line per run, skipped past run, invalid row and sync cancel."""
    if path is None:
        return
    runs = report.runs
    planned = RunOutcomes(runs.id, [o or "planned" for o in runs.outcome], runs.column, runs.error)
    rows = outcome_rows(table, planned, past_error="in the past (--past skip)")
    rows["run_at"] = pd.to_datetime(rows["run_at"], utc=True).dt.strftime(_TIME_FORMAT)
    cancels = pd.DataFrame(
        {
            "id": [task_id for task_id, _ in report.cancelled],
            "outcome": ["cancelled" if not why else "cancel_failed" for _, why in report.cancelled],
            "error": [why for _, why in report.cancelled],
        }
    )
    parts = [p for p in (rows.reindex(columns=list(OUTPUT_COLUMNS)), cancels) if len(p)]
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    frame = frame.reindex(columns=list(OUTPUT_COLUMNS))
    frame["row"] = frame["row"].astype("Int64")
    frame.to_csv(path, index=False)


def _naive_rule(tz: object) -> str:
    if tz is None:
        return "naive times need a tz cell or --tz (none given: such rows are refused)"
    return f"naive times read in {tz} (--tz) unless the row has tz"
