"""Unary calls with 32 concurrent clients against `schedkit serve --processes 1` and `2`.

One server process answers from one core; --processes N shares the port between N (the
kernel spreads connections). The 32 clients run in 4 processes of 8 threads, each thread on a
connection of its own, so the load generator is not itself held to one core by its GIL. On a
small machine the clients compete with the servers for the same cores: read the ratio
between the two runs, not the absolute rate.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from datetime import timedelta

from common import Report, Result, Sizes, future, percentile
from parts import server_process

from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.v1 import schedule_service_pb2_grpc as pb_grpc

CLIENT_PROCESSES = 4
THREADS_PER_PROCESS = 8


def _client_process(address: str, seconds: float, offset: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """8 threads calling ScheduleTask for ``seconds``; put every latency (ms) on ``out``."""
    import grpc

    start = future() + timedelta(days=offset)
    barrier = threading.Barrier(THREADS_PER_PROCESS)
    latencies: list[float] = []
    lock = threading.Lock()

    def work(thread: int) -> None:
        # A local subchannel pool: threads of one process would otherwise share a connection,
        # and a connection is answered by one server process.
        channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        stub = pb_grpc.ScheduleServiceStub(channel)

        def call(n: int) -> None:
            spec = pb.TaskSpec(task="water_plants")
            spec.args.append(f"plant-{thread}-{n}")
            spec.run_time.FromDatetime(start + timedelta(seconds=n, milliseconds=thread))
            stub.ScheduleTask(pb.ScheduleTaskRequest(spec=spec), timeout=30)

        call(-1)  # connect outside the measure
        barrier.wait()
        mine: list[float] = []
        deadline = time.perf_counter() + seconds
        n = 0
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            call(n)
            mine.append((time.perf_counter() - began) * 1000)
            n += 1
        with lock:
            latencies.extend(mine)
        channel.close()

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS_PER_PROCESS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.put(latencies)


def _load(address: str, seconds: float) -> list[float]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    clients = [
        context.Process(target=_client_process, args=(address, seconds, offset, out))
        for offset in range(CLIENT_PROCESSES)
    ]
    for client in clients:
        client.start()
    latencies: list[float] = []
    for _ in clients:
        latencies.extend(out.get(timeout=seconds + 120))
    for client in clients:
        client.join(30)
    return latencies


def schedkit_processes(report: Report, sizes: Sizes, url: str) -> None:
    """Calls/s, p50 and p99 with 32 clients, for 1 and 2 server processes."""
    clients = CLIENT_PROCESSES * THREADS_PER_PROCESS
    for processes in (1, 2):
        rates, p50s, p99s = [], [], []
        for _ in range(sizes.repeat):
            with server_process(url, processes=processes) as address:
                latencies = _load(address, sizes.load_seconds)
            rates.append(len(latencies) / sizes.load_seconds)
            p50s.append(percentile(latencies, 50))
            p99s.append(percentile(latencies, 99))
        # One process is what a user runs without the option: the baseline of the ratio.
        who = "schedkit serve --processes 2" if processes == 2 else "one server process"
        report.add(
            Result(f"unary calls/s, {clients} clients", who, "calls/s", rates,
                   higher_is_better=True, note=f"{sizes.load_seconds:g} s of load")
        )  # fmt: skip
        report.add(Result(f"unary p50, {clients} clients", who, "ms", p50s))
        report.add(Result(f"unary p99, {clients} clients", who, "ms", p99s))
