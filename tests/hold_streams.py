"""A hostile caller for the stream-bound tests: opens many idle streams and holds them.

Run as ``python tests/hold_streams.py ADDRESS KIND COUNT [TOKEN]``; KIND is ``open`` (health
watches and reflection streams, half each, no token), ``watch`` (WatchTasks) or ``quiet``
(ScheduleTasks streams that send one batch, then nothing). It prints one JSON line once every
stream is open or refused, ``{"open": n, "refused": {code: n}}``, then holds them all until
its stdin closes. A process of its own: it uses grpc.aio, whose completion queue must not be
shared with the test process's server loop.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc
from schedkit.wire.convert import datetime_to_timestamp

# Fewer than a connection may carry at once (SCHEDKIT_MAX_STREAMS_PER_CALLER): every stream
# reaches the server instead of waiting in the client.
STREAMS_PER_CONNECTION = 10


async def _silent(first: Any = None, *, after: float = 0.0) -> AsyncIterator[Any]:
    if first is not None:
        # A refusal comes at once; writing into a call being refused makes the client report
        # INTERNAL instead of the server's status, so a held stream asks a moment later.
        await asyncio.sleep(after)
        yield first
    await asyncio.Event().wait()  # never sends another message


def _one_batch() -> pb.ScheduleTasksRequest:
    when = datetime_to_timestamp(datetime.now(UTC) + timedelta(hours=1))
    return pb.ScheduleTasksRequest(specs=[pb.TaskSpec(task="nap", run_time=when)])


def _open(channel: grpc.aio.Channel, kind: str, n: int, metadata: Any) -> Any:
    if kind == "open" and n % 2:
        return health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
    if kind == "open":
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        return stub.ServerReflectionInfo(_silent(ask, after=1.0))
    stub = pb_grpc.ScheduleServiceStub(channel)
    if kind == "watch":
        return stub.WatchTasks(pb.WatchTasksRequest(), metadata=metadata)
    return stub.ScheduleTasks(_silent(_one_batch()), metadata=metadata)


async def _settled(call: Any) -> str:
    """``open`` once the stream has answered and is held, else the status it ended with
    (``pending`` if it shows neither within the wait)."""
    ended = asyncio.ensure_future(call.code())
    headers = asyncio.ensure_future(call.initial_metadata())
    try:
        # Every kind answers at once when served (health its status, reflection the service
        # list, WatchTasks its headers, a quiet ScheduleTasks its first batch); a refused
        # one ends at once, its headers and status together.
        await asyncio.wait({ended, headers}, timeout=20, return_when="FIRST_COMPLETED")
        if not ended.done():
            await asyncio.wait({ended}, timeout=0.5)
        if ended.done():
            return str(ended.result().name)
        return "open" if headers.done() else "pending"
    finally:
        for future in (ended, headers):
            if not future.done():
                future.cancel()


async def main(address: str, kind: str, count: int, token: str) -> None:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, count // STREAMS_PER_CONNECTION))
    ]
    calls = [_open(channels[n % len(channels)], kind, n, metadata) for n in range(count)]
    states = await asyncio.gather(*(_settled(call) for call in calls))
    refused = Counter(state for state in states if state != "open")
    print(json.dumps({"open": states.count("open"), "refused": refused}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for call in calls:
        call.cancel()
    for channel in channels:
        await channel.close()


if __name__ == "__main__":
    address, kind, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    asyncio.run(main(address, kind, count, sys.argv[4] if len(sys.argv) > 4 else ""))
