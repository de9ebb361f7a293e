"""schedkit.aio.Client against real servers: the shared stack (Redis, a worker, the dispatcher,
a server on 127.0.0.1:0) and servers of the test's own for tokens, TLS and stream bounds.

Each test runs its coroutine with ``asyncio.run``: one event loop per test, as an asyncio
service would have one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pandas as pd
import pytest
import trustme

import schedkit.aio
from schedkit.aio import Client, Watch
from schedkit.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SchedkitError,
    Unauthenticated,
    Unavailable,
)
from schedkit.model import Outcome, ScheduleResult, TaskSpec, TaskState
from schedkit.service.schedules import Schedules
from schedkit.service.server import Server
from schedkit.testing import LocalStack

T = TypeVar("T")
TOKEN = "aio-token-0123456789"


def run(main: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
    """Run ``main()`` on a fresh event loop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)

    return asyncio.run(bounded())


def later(hours: float = 1) -> datetime:
    return datetime.now(UTC) + timedelta(hours=hours)


def label() -> dict[str, str]:
    """A label of this test's own, so lists see only its tasks on the shared stack."""
    return {"aio": uuid.uuid4().hex[:12]}


@contextlib.contextmanager
def serving(schedules: Schedules, **changes: object) -> Iterator[Server]:
    settings = replace(schedules.settings, listen="127.0.0.1:0", **changes)  # type: ignore[arg-type]
    server = Server(schedules, settings=settings).start()
    try:
        yield server
    finally:
        server.stop(0)


# -- the surface ------------------------------------------------------------------------------


def test_the_blocking_client_methods_all_have_an_async_twin() -> None:
    blocking = {name for name in dir(schedkit.Client) if not name.startswith("_")}
    assert blocking <= {name for name in dir(Client) if not name.startswith("_")}


def test_schedule_runs_and_wait_for_sees_it_succeed(stack: LocalStack) -> None:
    async def main() -> None:
        async with Client.connect(stack.address) as client:
            types = await client.task_types()
            assert "add" in {t.name for t in types}
            task = await client.schedule("add", 2, 3, run_at=timedelta(seconds=1))
            assert task.state is TaskState.SCHEDULED
            done = await client.wait_for(task.id, ["SUCCEEDED"], timeout=30)
            assert done.result == "5"  # the JSON of the return value
            assert (await client.get(task.id)).state is TaskState.SUCCEEDED

    run(main)


def test_schedule_spec_says_created_then_existing(stack: LocalStack) -> None:
    async def main() -> None:
        client = await Client.connect(stack.address)
        try:
            spec = TaskSpec("add", later(), [1, 1], key=f"aio-{uuid.uuid4()}")
            first = await client.schedule_spec(spec)
            second = await client.schedule_spec(spec)
            assert (first.outcome, second.outcome) == (Outcome.CREATED, Outcome.EXISTING)
            assert first.task.id == second.task.id
        finally:
            await client.close()

    run(main)


def test_tasks_pages_and_frame_list_what_was_scheduled(stack: LocalStack) -> None:
    mine = label()

    async def main() -> None:
        async with Client.connect(stack.address) as client:
            ids = [
                (await client.schedule("add", n, n, run_at=later(1 + n), labels=mine)).id
                for n in range(5)
            ]
            page, token = await client.tasks_page(labels=mine, page_size=2)
            assert [t.id for t in page] == ids[:2]
            assert token
            listed = [t.id async for t in client.tasks(labels=mine, page_size=2)]
            assert listed == ids  # by run time, across three pages
            frame = await client.tasks_frame(labels=mine, tz="Europe/Paris", limit=3)
            assert isinstance(frame, pd.DataFrame)
            assert list(frame["id"]) == ids[:3]
            assert str(frame["run_at"].dt.tz) == "Europe/Paris"

    run(main)


def test_cancel_and_watch_see_the_change(stack: LocalStack) -> None:
    async def main() -> None:
        async with Client.connect(stack.address) as client:
            task = await client.schedule("add", 1, 2, run_at=later())
            async with client.watch(ids=[task.id], timeout=20) as changes:
                cancelled = await client.cancel(task.id)
                assert cancelled.state is TaskState.CANCELLED
                seen = await anext(changes)
            assert (seen.id, seen.state) == (task.id, TaskState.CANCELLED)

    run(main)


def test_a_watch_with_a_timeout_ends_quietly(stack: LocalStack) -> None:
    async def main() -> list[str]:
        async with Client.connect(stack.address) as client:
            return [t.id async for t in client.watch(ids=["nothing-changes-here"], timeout=1)]

    assert run(main) == []


def test_schedule_many_takes_plain_and_async_iterables_and_keeps_order(stack: LocalStack) -> None:
    mine = label()
    naive = datetime.now() + timedelta(hours=3)  # the mistake under test: no time zone
    specs = [
        TaskSpec("add", later(), [1, 1], labels=mine),
        TaskSpec("add", naive, [1, 1], labels=mine),  # refused on the client
        TaskSpec("ad", later(), [1, 1], labels=mine),  # refused by the server
        TaskSpec("add", later(), [2, 2], labels=mine),
        TaskSpec("add", later(), [3, 3], labels=mine),
    ]

    async def from_async() -> AsyncIterator[TaskSpec]:
        for spec in specs:
            await asyncio.sleep(0)  # a source that awaits between items
            yield spec

    async def main() -> None:
        async with Client.connect(stack.address) as client:
            plain = [r async for r in client.schedule_many(specs, batch_size=2)]
            streamed = [r async for r in client.schedule_many(from_async(), batch_size=2)]
            for results in (plain, streamed):
                outcomes = [r.outcome for r in results]
                assert (
                    outcomes
                    == [Outcome.CREATED, Outcome.REJECTED, Outcome.REJECTED] + [Outcome.CREATED] * 2
                )
                local, remote = results[1].error, results[2].error
                assert isinstance(local, InvalidArgument)
                assert local.violations[0].field == "specs[1].run_at"
                assert isinstance(remote, InvalidArgument)
                assert remote.violations[0].field == "specs[0].task"  # its place in batch 2
                assert "did you mean add?" in remote.message
            listed = [t async for t in client.tasks(labels=mine)]
            assert len(listed) == 6

    run(main)


def test_schedule_frame_schedules_a_timetable_and_names_bad_rows(stack: LocalStack) -> None:
    mine = uuid.uuid4().hex[:12]
    frame = pd.DataFrame(
        {
            "task": ["add", "ad"],
            "run_at": [later().isoformat(), later().isoformat()],
            "args": ["[1, 2]", "[3, 4]"],
            "labels": [json.dumps({"batch": mine})] * 2,
        }
    )

    async def main() -> pd.DataFrame:
        async with Client.connect(stack.address) as client:
            result = await client.schedule_frame(frame, tz="UTC")
            listed = [t async for t in client.tasks(labels={"batch": mine})]
            assert [t.id for t in listed] == [result["id"].iloc[0]]
            return result

    result = run(main)
    assert list(result["outcome"]) == ["created", "rejected"]
    assert "did you mean add?" in result["error"].iloc[1]


def test_cancelling_schedule_frame_ends_its_stream_and_frees_the_loop(stack: LocalStack) -> None:
    """Cancelled once its first tasks are stored: the task raises CancelledError, the loop
    (and asyncio.run, which waits for worker threads) ends, and the rest is never sent."""
    mine = uuid.uuid4().hex[:12]
    rows = 20_000
    frame = pd.DataFrame(
        {
            "task": ["add"] * rows,
            "run_at": [(later(2) + timedelta(seconds=n)).isoformat() for n in range(rows)],
            "args": [f"[{n}, 1]" for n in range(rows)],
            "labels": [json.dumps({"cancelled_frame": mine})] * rows,
        }
    )

    async def count(client: Client) -> int:
        return len([t async for t in client.tasks(labels={"cancelled_frame": mine})])

    async def main() -> int:
        async with Client.connect(stack.address) as client:
            job = asyncio.create_task(client.schedule_frame(frame, tz="UTC"))
            while not (await client.tasks_page(labels={"cancelled_frame": mine}, page_size=1))[0]:
                assert not job.done(), job  # it must still be sending when cancelled
                await asyncio.sleep(0.01)  # polling the server for the first stored task
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job
            return await count(client)

    stored = run(main, timeout=90)
    print(f"{stored} of {rows} rows stored when cancelled")
    assert 0 < stored < rows  # the stream ended with the task, not after the last batch


# -- errors -----------------------------------------------------------------------------------


def test_failures_raise_the_schedkit_error_of_their_status(stack: LocalStack) -> None:
    async def main() -> None:
        async with Client.connect(stack.address) as client:
            with pytest.raises(NotFound) as missing:
                await client.get("no-such-task")
            assert missing.value.code.name == "NOT_FOUND"
            with pytest.raises(InvalidArgument, match="did you mean add") as refused:
                await client.schedule("ad", 1, 2, run_at=later())
            assert refused.value.violations[0].field == "spec.task"
            with pytest.raises(InvalidArgument, match="naive"):
                await client.schedule_spec(TaskSpec("add", datetime.now(), [1, 2]))
            task = await client.schedule("add", 1, 2, run_at=timedelta(seconds=0))
            await client.wait_for(task.id, ["SUCCEEDED"], timeout=30)
            with pytest.raises(FailedPrecondition):
                await client.cancel(task.id)
            with pytest.raises(InvalidArgument):
                await client.tasks_page(page_token="not-a-token")

    run(main)


def test_a_closed_client_says_so_as_a_schedkit_error(stack: LocalStack) -> None:
    async def main() -> None:
        client = await Client.connect(stack.address)
        await client.close()
        with pytest.raises(Unavailable, match="closed"):
            await client.get("anything")
        with pytest.raises(Unavailable, match="closed"):
            client.schedule_many([TaskSpec("add", later(), [1, 2])])
        with pytest.raises(Unavailable, match="closed"):
            client.watch()

    run(main)


def test_no_server_is_unavailable_within_wait_ready(hung_server: str) -> None:
    # A port that was free a moment ago: the hung server's, after it stopped, is not
    # reliably free, so ask the OS for one and close it.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"

    async def main() -> None:
        with pytest.raises(Unavailable, match="no schedkit server answered"):
            await Client.connect(address, wait_ready=0.5)

    run(main)


def test_a_stream_the_server_never_answers_ends_with_unavailable(hung_server: str) -> None:
    async def main() -> None:
        async with Client.connect(hung_server) as client:
            results = client.schedule_many([TaskSpec("add", later(), [1, 1])], stall_timeout=1.0)
            with pytest.raises(Unavailable, match="no batch for 1s"):
                [r async for r in results]

    run(main)


def test_an_error_in_the_callers_spec_source_is_raised_as_it_is(stack: LocalStack) -> None:
    class SourceBroke(Exception):
        pass

    async def broken() -> AsyncIterator[TaskSpec]:
        yield TaskSpec("add", later(), [1, 1])
        raise SourceBroke("the feed went away")

    async def main() -> None:
        async with Client.connect(stack.address) as client:
            with pytest.raises(SourceBroke):
                [r async for r in client.schedule_many(broken(), batch_size=1)]

    run(main)


# -- tokens and TLS ---------------------------------------------------------------------------


def test_calls_without_the_token_are_unauthenticated_and_write_nothing(
    schedules: Schedules,
) -> None:
    async def main(address: str) -> None:
        async with Client.connect(address, token="") as anonymous:
            with pytest.raises(Unauthenticated, match="missing credentials"):
                await anonymous.task_types()
            with pytest.raises(Unauthenticated):
                [r async for r in anonymous.schedule_many([TaskSpec("add", later(), [1, 2])])]
            with pytest.raises(Unauthenticated):
                async with anonymous.watch(timeout=5):
                    pass
        async with Client.connect(address, token="wrong") as wrong:
            with pytest.raises(Unauthenticated, match="invalid token"):
                await wrong.schedule("add", 1, 2, run_at=later())

    with serving(schedules, token=TOKEN) as server:
        run(lambda: main(server.address))
    assert schedules.store.count(TaskState.SCHEDULED) == 0


def test_the_token_is_sent_on_every_kind_of_call(
    schedules: Schedules, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main(address: str) -> None:
        async with Client.connect(address) as client:  # the token from SCHEDKIT_TOKEN
            assert "add" in {t.name for t in await client.task_types()}
            task = await client.schedule("add", 1, 2, run_at=later())
            (streamed,) = [
                r async for r in client.schedule_many([TaskSpec("add", later(), [3, 4])])
            ]
            assert streamed.outcome is Outcome.CREATED
            assert [t.id async for t in client.tasks()] == [task.id, streamed.id]
            async with client.watch(ids=[task.id], timeout=10) as changes:
                await client.cancel(task.id)
                assert (await anext(changes)).state is TaskState.CANCELLED

    monkeypatch.setenv("SCHEDKIT_TOKEN", TOKEN)
    with serving(schedules, token=TOKEN) as server:
        run(lambda: main(server.address))


def pem_files(tmp_path: Path, ca: trustme.CA, *names: str) -> dict[str, str]:
    """CA, certificate and key as files, the certificate issued by ``ca`` for ``names``."""
    cert = ca.issue_cert(*names)
    tmp_path.mkdir(parents=True, exist_ok=True)
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    return {k: str(v) for k, v in files.items()}


def test_mutual_tls_and_a_token_together(schedules: Schedules, tmp_path: Path) -> None:
    ca = trustme.CA()
    server_pem = pem_files(tmp_path / "server", ca, "127.0.0.1")
    client_pem = pem_files(tmp_path / "client", ca, "service@example.org")
    other = pem_files(tmp_path / "other", trustme.CA(), "127.0.0.1")

    async def main(address: str) -> None:
        tls = {"tls_ca": server_pem["ca"], "tls_cert": client_pem["cert"]}
        async with Client.connect(address, token=TOKEN, tls_key=client_pem["key"], **tls) as client:
            task = await client.schedule("add", 1, 2, run_at=later())
            assert task.state is TaskState.SCHEDULED
        with pytest.raises(Unavailable, match="TLS"):  # a server this CA did not sign
            await Client.connect(address, tls_ca=other["ca"], wait_ready=1)
        with pytest.raises(Unavailable):  # plaintext to a TLS port
            await Client.connect(address, tls=False, wait_ready=1)

    with serving(
        schedules,
        token=TOKEN,
        tls_cert=server_pem["cert"],
        tls_key=server_pem["key"],
        tls_ca=server_pem["ca"],
    ) as server:
        run(lambda: main(server.address))


# -- cancellation and a running loop ----------------------------------------------------------


def test_cancelled_iterators_give_their_stream_back(schedules: Schedules) -> None:
    """A caller may hold two streams here. Cancelling the task that reads a watch, leaving a
    schedule_many loop early and closing a watch each end the call: if any left its stream
    open, the rounds after the second could never start one."""

    async def retried(start: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + 10
        while True:
            try:
                return await start()
            except (ResourceExhausted, Unavailable):
                assert time.monotonic() < deadline, "ended streams never gave their slots back"
                await asyncio.sleep(0.05)  # the server sees a cancellation after the client

    async def main(address: str) -> None:
        async with Client.connect(address, token=TOKEN) as client:
            task = await client.schedule("add", 1, 2, run_at=later())

            async def started_watch() -> Watch:
                changes = client.watch(ids=[task.id])
                await changes.start()
                return changes

            for _ in range(4):
                changes = await retried(started_watch)

                async def follow(changes: Watch = changes) -> None:
                    async with changes:
                        async for _change in changes:
                            pass

                follower = asyncio.create_task(follow())
                await asyncio.sleep(0.01)  # let it wait for a change that never comes
                follower.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await follower

            async def first_result() -> ScheduleResult:
                endless = (TaskSpec("add", later(), [n, n]) for n in itertools.count())
                results = client.schedule_many(endless, batch_size=1, max_in_flight=1)
                async with contextlib.aclosing(results):
                    async for result in results:
                        return result
                raise AssertionError("an endless source ended")

            for _ in range(4):
                assert (await retried(first_result)).outcome is Outcome.CREATED

            for _ in range(4):
                changes = await retried(started_watch)
                await changes.aclose()
                assert [t async for t in changes] == []

    with serving(schedules, token=TOKEN, max_streams_per_caller=2) as server:
        run(lambda: main(server.address))


def test_two_calls_at_once_on_one_loop(stack: LocalStack) -> None:
    """Waiting for one task blocks neither the other call nor the loop itself."""

    async def main() -> None:
        async with Client.connect(stack.address) as client:
            first = await client.schedule("add", 1, 1, run_at=timedelta(seconds=1))
            second = await client.schedule("add", 2, 2, run_at=timedelta(seconds=2))
            ticks = 0

            async def heartbeat() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.05)

            beating = asyncio.create_task(heartbeat())
            done = await asyncio.gather(
                client.wait_for(first.id, ["SUCCEEDED"], timeout=30),
                client.wait_for(second.id, ["SUCCEEDED"], timeout=30),
            )
            beating.cancel()
            assert [t.result for t in done] == ["2", "4"]
            assert ticks > 1  # the loop ran other work while both calls waited

    run(main)


def test_wait_for_raises_unavailable_when_the_state_does_not_come(stack: LocalStack) -> None:
    async def main() -> None:
        async with Client.connect(stack.address) as client:
            task = await client.schedule("add", 1, 2, run_at=later())
            with pytest.raises(Unavailable, match="still SCHEDULED") as waited:
                await client.wait_for(task.id, ["SUCCEEDED"], timeout=1)
            assert isinstance(waited.value, SchedkitError)

    run(main)


def test_schedules_and_edits_awaited_create_list_pause_trigger_backfill_and_delete(
    stack: LocalStack,
) -> None:
    """The schedule methods of issue 16 on the asyncio client, against the real stack: the
    plans are the blocking client's, only the sending is awaited."""
    tag = uuid.uuid4().hex[:10]
    schedule_id = f"aio-{tag}"

    async def main() -> None:
        async with Client.connect(stack.address) as client:
            created = await client.create_schedule(
                schedule_id, "add", args=[1, 2], cron="0 8 * * *", tz="Europe/Paris",
                labels={"aio": tag},
            )  # fmt: skip
            assert created.outcome == "CREATED"
            again = await client.create_schedule(
                schedule_id, "add", args=[1, 2], cron="0 8 * * *", tz="Europe/Paris",
                labels={"aio": tag},
            )  # fmt: skip
            assert again.outcome == "EXISTING"
            listed = [s.id async for s in client.schedules(labels={"aio": tag}, page_size=1)]
            assert listed == [schedule_id]
            paused = await client.pause(schedule_id, note="aio says wait")
            assert (paused.paused, paused.note) == (True, "aio says wait")
            assert not (await client.resume(schedule_id)).paused
            run_now = await client.trigger(schedule_id)
            assert run_now.spec.labels["schedkit.schedule"] == schedule_id
            start = datetime(2020, 1, 1, tzinfo=UTC)
            end = start + timedelta(days=3)
            assert await client.backfill(schedule_id, start, end) == (3, 0)
            assert (await client.get_schedule(schedule_id)).id == schedule_id
            await client.delete_schedule(schedule_id)
            with pytest.raises(NotFound):
                await client.get_schedule(schedule_id)
            mine = label()
            task = await client.schedule("add", 1, 1, run_at=later(), labels=mine)
            new_time = later(2).replace(microsecond=0)
            moved = await client.update_task(task.id, run_at=new_time, args=[5, 5])
            assert (moved.spec.args, moved.spec.run_at) == ([5, 5], new_time)
            assert await client.cancel_tasks(labels=mine) == 1
            assert (await client.get(task.id)).state is TaskState.CANCELLED

    run(main)
