"""``python -m schedkit.scheduler`` against a real stack: idempotency, sync, retries, reports."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from conftest import poll
from schedkit.client.client import Client
from schedkit.dispatch.registry import TaskRegistry
from schedkit.model import TaskRecord, TaskState
from schedkit.runtime.embedded import free_port
from schedkit.scheduler import main
from schedkit.service.schedules import Schedules
from schedkit.service.server import Server
from schedkit.testing import LocalStack, local_stack
from schedkit.timetable.check import load_timetable
from schedkit.timetable.options import TimetableOptions

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "timetable.csv"
FAST = {"handoff_window": 3.0, "poll_interval": 0.2, "claim_lease": 5.0}


def tomorrow(minutes: int = 0) -> str:
    moment = datetime.now(UTC) + timedelta(days=1, minutes=minutes)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def write(path: Path, rows: list[str], header: str = "task,run_at,args,kwargs") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def tasks_of(client: Client, source: str, *states: TaskState) -> list[TaskRecord]:
    return list(client.tasks(states=states, labels={"source": source}))


def run(*argv: str) -> int:
    return main([*argv, "--quiet"])


@pytest.fixture
def source() -> str:
    """A source name of this test's own, so tests sharing the stack stay apart."""
    return f"t-{uuid.uuid4().hex[:8]}"


def test_example_timetable_is_scheduled(
    stack: LocalStack, client: Client, source: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(str(EXAMPLE), "--server", stack.address, "--source", source) == 0
    out = capsys.readouterr().out
    assert "naive times need a tz cell or --tz (none given: such rows are refused)" in out
    assert "past runs: skip" in out
    expected = load_timetable(EXAMPLE, TimetableOptions(source=source)).runs
    assert {t.spec.key for t in tasks_of(client, source)} == set(expected["key"])


def test_same_timetable_twice_creates_nothing_the_second_time(
    stack: LocalStack, client: Client, source: str, tmp_path: Path
) -> None:
    rows = [f'add,{tomorrow(i)},"[{i}, 1]",' for i in range(50)]
    path = write(tmp_path / "t.csv", rows)
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    assert (
        run(str(path), "--server", stack.address, "--source", source, "--output", str(first)) == 0
    )
    assert (
        run(str(path), "--server", stack.address, "--source", source, "--output", str(second)) == 0
    )
    assert set(pd.read_csv(first)["outcome"]) == {"created"}
    again = pd.read_csv(second)
    assert set(again["outcome"]) == {"existing"}
    assert len(tasks_of(client, source)) == 50
    assert list(again["id"]) == list(pd.read_csv(first)["id"])


def test_sync_after_deleting_a_row_cancels_exactly_that_task(
    stack: LocalStack,
    client: Client,
    source: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [f'add,{tomorrow(i)},"[{i}, 2]",' for i in range(5)]
    path = write(tmp_path / "t.csv", rows)
    assert run(str(path), "--server", stack.address, "--source", source, "--sync") == 0
    before = {t.spec.args[0]: t.id for t in tasks_of(client, source)}
    write(path, rows[:2] + rows[3:])
    capsys.readouterr()
    assert run(str(path), "--server", stack.address, "--source", source, "--sync") == 0
    out = capsys.readouterr().out
    assert out.count("\n  = row") == 4
    assert out.count("\n  - ") == 1
    cancelled = tasks_of(client, source, TaskState.CANCELLED)
    assert [t.id for t in cancelled] == [before[2]]
    assert len(tasks_of(client, source, TaskState.SCHEDULED)) == 4


def test_sync_cancels_nothing_while_rows_are_bad(
    stack: LocalStack, client: Client, source: str, tmp_path: Path
) -> None:
    rows = [f'add,{tomorrow(i)},"[{i}, 2]",' for i in range(3)]
    path = write(tmp_path / "t.csv", rows)
    assert run(str(path), "--server", stack.address, "--source", source, "--sync") == 0
    write(path, [rows[0], f"add,{tomorrow(1)},[oops,"])
    assert run(str(path), "--server", stack.address, "--source", source, "--sync") == 1
    assert tasks_of(client, source, TaskState.CANCELLED) == []


def test_sync_moves_a_keyed_row_whose_time_or_args_changed_instead_of_refusing_it(
    stack: LocalStack,
    client: Client,
    source: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    header = "task,run_at,args,kwargs,key"
    first = [f'add,{tomorrow(0)},"[1, 2]",,k1', f'add,{tomorrow(1)},"[3, 4]",,k2',
             f'add,{tomorrow(2)},"[5, 6]",,k3', f'add,{tomorrow(3)},"[7, 8]",,k4']  # fmt: skip
    path = write(tmp_path / "t.csv", first, header)
    assert run(str(path), "--server", stack.address, "--source", source, "--sync") == 0
    ids = {t.spec.key: t.id for t in tasks_of(client, source)}
    later = tomorrow(90)
    changed = [f'add,{later},"[1, 2]",,k1', f'add,{tomorrow(1)},"[30, 40]",,k2', first[2],
               f'fail,{tomorrow(3)},"[""x""]",,k4']  # fmt: skip
    write(path, changed, header)
    args = ("--server", stack.address, "--source", source, "--sync")
    capsys.readouterr()
    assert run(str(path), *args, "--dry-run") == 0  # a plan: nothing is sent
    plan = capsys.readouterr().out
    assert (plan.count("\n  ~ row"), plan.count("\n  = row"), plan.count("\n  ! row")) == (2, 1, 1)
    output = tmp_path / "out.csv"
    # k4 changed its task, which no update can: refused naming the column, so nothing is
    # cancelled, but k1 and k2 moved.
    assert run(str(path), *args, "--output", str(output)) == 1
    result = pd.read_csv(output, keep_default_na=False).set_index("key")
    assert list(result["outcome"]) == ["moved", "moved", "existing", "rejected"]
    assert result.loc["k4", "column"] == "task"
    assert "give the row a new key" in result.loc["k4", "error"]
    now = {t.spec.key: t for t in tasks_of(client, source, TaskState.SCHEDULED)}
    assert {key: t.id for key, t in now.items()} == ids  # the same tasks, moved in place
    assert now["k1"].spec.run_at == datetime.fromisoformat(later)
    assert now["k2"].spec.args == [30, 40]
    assert now["k4"].spec.task == "add"
    assert tasks_of(client, source, TaskState.CANCELLED) == []


def test_dry_run_sends_nothing_and_a_sync_plan_shows_each_change(
    stack: LocalStack,
    client: Client,
    source: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [f'add,{tomorrow(i)},"[{i}, 3]",' for i in range(3)]
    path = write(tmp_path / "t.csv", rows)
    assert run(str(path), "--server", stack.address, "--source", source, "--dry-run") == 0
    assert tasks_of(client, source) == []
    assert run(str(path), "--server", stack.address, "--source", source) == 0
    write(path, [*rows[1:], f'add,{tomorrow(9)},"[9, 3]",'])
    capsys.readouterr()
    args = ("--server", stack.address, "--source", source, "--sync", "--dry-run")
    assert run(str(path), *args) == 0
    out = capsys.readouterr().out
    assert (out.count("\n  + row"), out.count("\n  = row"), out.count("\n  - ")) == (1, 2, 1)
    assert len(tasks_of(client, source, TaskState.SCHEDULED)) == 3  # still nothing changed


def test_recurring_row_over_a_moving_horizon_has_no_duplicate_runs(
    stack: LocalStack, client: Client, source: str, tmp_path: Path
) -> None:
    path = write(
        tmp_path / "t.csv",
        ['add,2026-01-01 00:00,"[1, 1]",,30min'],
        "task,run_at,args,kwargs,every",
    )
    out1, out2 = tmp_path / "1.csv", tmp_path / "2.csv"
    base = ("--server", stack.address, "--source", source)
    base = (*base, "--tz", "UTC")  # the naive start time is meant as UTC
    assert run(str(path), *base, "--horizon", "3h", "--output", str(out1)) == 0
    assert run(str(path), *base, "--horizon", "6h", "--output", str(out2)) == 0
    first, second = pd.read_csv(out1), pd.read_csv(out2)
    assert len(first) == 6
    assert len(second) == 12
    assert set(second[second["outcome"] == "existing"]["key"]) == set(first["key"])
    runs = [t.spec.run_at for t in tasks_of(client, source)]
    assert len(runs) == len(set(runs)) == 12


def test_dst_gap_row_is_refused_with_its_row_number(
    stack: LocalStack,
    client: Client,
    source: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(
        tmp_path / "t.csv",
        [
            'add,2099-03-28 02:30,"[1, 1]",,Europe/Paris',
            'add,2099-03-29 02:30,"[2, 1]",,Europe/Paris',
        ],
        "task,run_at,args,kwargs,tz",
    )
    assert run(str(path), "--server", stack.address, "--source", source) == 1
    out = capsys.readouterr().out
    assert "row 2, run_at: 2099-03-29T02:30:00 does not exist in Europe/Paris" in out
    assert [t.spec.args for t in tasks_of(client, source)] == [[1, 1]]
    assert run(str(path), "--server", stack.address, "--source", source, "--dst", "shift") == 0
    assert len(tasks_of(client, source)) == 2


def test_a_naive_time_needs_tz_and_tz_utc_says_utc_on_purpose(
    stack: LocalStack,
    client: Client,
    source: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(
        tmp_path / "t.csv",
        ['add,2099-05-01 09:00,"[1, 1]",', 'add,2099-05-01T09:00:00+02:00,"[2, 1]",'],
    )
    assert run(str(path), "--server", stack.address, "--source", source) == 1
    out = capsys.readouterr().out
    assert "row 1, run_at: '2099-05-01 09:00' has no time zone" in out
    assert "--tz Europe/Paris" in out
    assert [t.spec.args for t in tasks_of(client, source)] == [[2, 1]]

    assert run(str(path), "--server", stack.address, "--source", source, "--tz", "UTC") == 0
    runs = {tuple(t.spec.args): t.spec.run_at for t in tasks_of(client, source)}
    assert runs[(1, 1)] == datetime(2099, 5, 1, 9, 0, tzinfo=UTC)


def test_bad_rows_are_reported_and_every_good_row_is_scheduled(
    stack: LocalStack,
    client: Client,
    source: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    n = 3000
    rows = [f'add,{tomorrow(i % 600)},"[{i}, 1]",' for i in range(n)]
    rows[10] = (
        f"add,{tomorrow()},[1, oops],"  # unquoted and broken JSON: a row with a cell too many
    )
    rows[1500] = 'add,31/12/2099,"[1500, 1]",'
    rows[2999] = f'no_such_task,{tomorrow()},"[2999, 1]",'
    rows[2000] = f'add,{tomorrow()},"[1, 2, 3]",'  # does not fit add(x, y): the server says
    path = write(tmp_path / "t.csv", rows)
    output = tmp_path / "out.csv"
    assert (
        run(str(path), "--server", stack.address, "--source", source, "--output", str(output)) == 1
    )
    out = capsys.readouterr().out
    assert "row 11, (row): expected 4 cells, found 5" in out
    assert "row 1501, run_at: '31/12/2099' is not an ISO 8601 time" in out
    assert "row 3000, task: unknown task 'no_such_task'" in out
    assert "row 2001, args: arguments do not fit add" in out
    assert len(tasks_of(client, source)) == n - 4
    results = pd.read_csv(output)
    # The same outcome columns as Client.schedule_frame's result.
    columns = ["row", "run_at", "task", "key", "id", "outcome", "column", "error"]
    assert list(results.columns) == columns
    assert (results["outcome"] == "created").sum() == n - 4
    bad = results[results["outcome"].isin(["invalid", "rejected"])]
    assert sorted(bad["row"]) == [11, 1501, 2001, 3000]
    assert dict(zip(bad["row"], bad["column"], strict=True)) == {
        11: "(row)",
        1501: "run_at",
        2001: "args",
        3000: "task",
    }


def test_past_rows_are_skipped_by_default_and_said_so(
    stack: LocalStack,
    client: Client,
    source: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(
        tmp_path / "t.csv", ['add,2020-01-01T00:00Z,"[1, 1]",', f'add,{tomorrow()},"[2, 1]",']
    )
    assert run(str(path), "--server", stack.address, "--source", source) == 0
    out = capsys.readouterr().out
    assert "skipped (past)               1   (--past skip" in out
    assert len(tasks_of(client, source)) == 1
    assert run(str(path), "--server", stack.address, "--source", source, "--past", "error") == 1
    assert run(str(path), "--server", stack.address, "--source", source, "--past", "run") == 0
    late = [t for t in tasks_of(client, source) if t.spec.args == [1, 1]]
    assert len(late) == 1
    # Run again: the moved-to-now run is found by its key, not created a second time.
    assert run(str(path), "--server", stack.address, "--source", source, "--past", "run") == 0
    assert len([t for t in tasks_of(client, source) if t.spec.args == [1, 1]]) == 1
    client.wait_for(late[0].id, ["SUCCEEDED"])


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "missing.csv"), "--dry-run"]) == 2
    assert "no such file" in capsys.readouterr().err
    path = write(tmp_path / "t.csv", ["add,[]"], "task,args")
    assert main([str(path), "--dry-run"]) == 2
    assert "missing required column(s) run_at" in capsys.readouterr().err
    assert main([str(path), "--horizon", "soon"]) == 2
    (tmp_path / "empty.csv").write_text("")
    assert main([str(tmp_path / "empty.csv"), "--dry-run"]) == 2
    assert "empty" in capsys.readouterr().err


def test_header_only_is_nothing_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "t.csv", [])
    assert main([str(path), "--dry-run", "--quiet"]) == 0
    assert "0 rows read, 0 runs to send" in capsys.readouterr().out


def test_unreachable_server_exits_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "t.csv", [f'add,{tomorrow()},"[1, 1]",'])
    address = f"127.0.0.1:{free_port()}"
    assert run(str(path), "--server", address, "--retry-for", "1s") == 2
    err = capsys.readouterr().err
    assert f"the server at {address} is unreachable" in err
    assert "Re-run when it is back" in err


def test_a_hung_server_is_given_up_after_the_stall_timeout(
    tmp_path: Path, hung_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "t.csv", [f'add,{tomorrow()},"[1, 1]",'])
    argv = ["--server", hung_server, "--stall-timeout", "1s", "--retry-for", "2s"]
    assert run(str(path), *argv) == 2
    err = capsys.readouterr().err
    assert "answered no batch for 1s" in err
    assert f"the server at {hung_server} is unreachable" in err


def test_help_documents_format_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for needle in ("run_at", "label.<name>", "exit codes", "row N is line", "--sync", "cron"):
        assert needle in text


def _restart_server(stack: LocalStack, port: int) -> None:
    assert stack.store is not None
    assert stack.app is not None
    registry = TaskRegistry(stack.app, stack.settings.allow_tasks)
    schedules = Schedules(stack.store, registry, stack.settings, broker=stack.broker)
    stack.server = Server(schedules, listen=f"127.0.0.1:{port}").start()


def _in_thread(argv: list[str]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(code=main(argv)), daemon=True)
    thread.start()
    return thread, result


@pytest.mark.parametrize("restart_while_retrying", [False, True])
def test_server_killed_mid_stream_then_every_row_is_scheduled_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restart_while_retrying: bool
) -> None:
    n = 20_000
    rows = [f'add,{tomorrow(i % 1000)},"[{i}, 1]",' for i in range(n)]
    path = write(tmp_path / "t.csv", rows)
    with local_stack(worker=False, **FAST) as stack, stack.client() as client:
        assert stack.server is not None
        assert stack.store is not None
        port, store = stack.server.port, stack.store
        retry = "60s" if restart_while_retrying else "1s"
        argv = [
            str(path),
            "--server",
            stack.address,
            "--source",
            "kill",
            "-q",
            "--retry-for",
            retry,
        ]
        thread, result = _in_thread(argv)
        poll(lambda: store.count(TaskState.SCHEDULED) >= 2000, what="the stream to start")
        stack.server.stop(0)
        stack.server = None
        if restart_while_retrying:
            poll(lambda: "retrying" in capsys.readouterr().err, what="a retry")
            _restart_server(stack, port)
            thread.join(120)
            assert result["code"] == 0
        else:
            thread.join(60)
            assert result["code"] == 2
            assert 0 < store.count(TaskState.SCHEDULED) < n
            _restart_server(stack, port)
            assert run(*argv) == 0
        keys = [t.spec.key for t in tasks_of(client, "kill")]
        assert len(keys) == n
        assert set(keys) == set(load_timetable(path, TimetableOptions(source="kill")).runs["key"])


def test_every_re_reads_the_file_until_stopped(
    stack: LocalStack, client: Client, source: str, tmp_path: Path
) -> None:
    first, second = f'add,{tomorrow()},"[1, 4]",', f'add,{tomorrow(1)},"[2, 4]",'
    path = write(tmp_path / "t.csv", [first])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDKIT_")}
    command = [sys.executable, "-m", "schedkit.scheduler", str(path), "--server", stack.address]
    process = subprocess.Popen(
        [*command, "--source", source, "--every", "0.5s"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        poll(lambda: len(tasks_of(client, source)) == 1, what="the first pass")
        write(path, [first, second])
        poll(lambda: len(tasks_of(client, source)) == 2, what="the re-read file")
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out.count("next pass in 0.5s") >= 2
    assert "row/s" not in err  # no progress bar in a pipe


def test_progress_bar_on_a_terminal(stack: LocalStack, source: str, tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", [f'add,{tomorrow(i)},"[{i}, 5]",' for i in range(2000)])
    leader, follower = pty.openpty()
    # A terminal of a real size: at 0 columns tqdm draws an empty bar.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    command = [sys.executable, "-m", "schedkit.scheduler", str(path), "--server", stack.address]
    process = subprocess.Popen(
        [*command, "--source", source], stdout=subprocess.DEVNULL, stderr=follower
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert process.wait(timeout=60) == 0
    assert b"row/s" in seen or b"s/row" in seen


def test_recurring_rows_become_server_side_schedules_once_with_recurring_server(
    stack: LocalStack, client: Client, source: str, tmp_path: Path
) -> None:
    path = write(
        tmp_path / "r.csv",
        [
            f'add,{tomorrow()},"[1, 2]",,15min,,',
            'add,,"[3, 4]",,,0 8 * * mon-fri,Europe/Berlin',
            f'add,{tomorrow()},"[5, 6]",,1D,,',
            f'add,{tomorrow(5)},"[7, 8]",,,,',
        ],
        header="task,run_at,args,kwargs,every,cron,tz",
    )
    argv = (str(path), "--server", stack.address, "--source", source, "--recurring", "server")
    assert run(*argv) == 1  # the calendar "1D" row is refused, naming its column
    assert run(*argv) == 1  # again: nothing new
    mine = list(client.schedules(labels={"source": source}))
    assert len(mine) == 2
    by_cron = {s.definition.recurrence.cron: s for s in mine}
    assert by_cron[("0 8 * * mon-fri",)].definition.recurrence.tz == "Europe/Berlin"
    assert by_cron[()].definition.recurrence.every == timedelta(minutes=15)
    # The one-off row was scheduled as usual, the recurring ones were not expanded.
    keys = [
        t.spec.key for t in tasks_of(client, source) if "schedkit.schedule" not in t.spec.labels
    ]
    assert len(keys) == 1
    for schedule in mine:
        client.delete_schedule(schedule.id)
