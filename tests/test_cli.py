"""`schedkit up` as a user runs it, and the API through `buf curl` with reflection only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import schedkit_process
from schedkit.runtime.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
# buf from the buf-bin package of the dev extra, beside this interpreter in .venv/bin.
BUF = Path(sys.executable).parent / "buf"


class Up:
    """A `schedkit up` child process and the address it serves on."""

    def __init__(self, process: subprocess.Popen[str], address: str, data_dir: Path) -> None:
        self.process = process
        self.address = address
        self.data_dir = data_dir


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    address = f"127.0.0.1:{free_port()}"
    with schedkit_process(
        ["up", "--listen", address, "--data-dir", str(tmp_path)],
        "schedkit is up",
        env={"SCHEDKIT_HANDOFF_WINDOW": "3"},
        stop=stop_tree,
        start_new_session=True,  # a process group of its own, as a terminal gives it
    ) as (process, _):
        yield Up(process, address, tmp_path)


def stop_tree(process: subprocess.Popen[str]) -> None:
    """Ctrl-C first, as a user would; kill what is left so no child outlives the test."""
    if process.poll() is None:
        children = psutil.Process(process.pid).children(recursive=True)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        _, alive = psutil.wait_procs(children, timeout=10)
        for child in alive:
            child.kill()


def test_up_serves_health_then_stops_everything_on_ctrl_c(up: Up) -> None:
    children = psutil.Process(up.process.pid).children(recursive=True)
    names = " ".join(" ".join(c.cmdline()) for c in children)
    assert "redis-server" in names
    assert "worker" in names
    with grpc.insecure_channel(up.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="schedkit.v1.ScheduleService"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    up.process.send_signal(signal.SIGINT)
    assert up.process.wait(timeout=60) == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []


def test_ctrl_c_in_a_terminal_stops_the_embedded_redis_last(up: Up) -> None:
    """A terminal sends Ctrl-C to the whole process group: Redis must not take it and stop
    while the dispatcher and the worker still use it; `schedkit up` stops it, last."""
    os.killpg(up.process.pid, signal.SIGINT)
    assert up.process.wait(timeout=60) == 0
    redis_log = (up.data_dir / "redis" / "redis.log").read_text()
    assert "Received SIGINT" not in redis_log
    assert "Received SIGTERM" in redis_log


def buf_curl(address: str, method: str, body: dict[str, object]) -> dict[str, object]:
    done = subprocess.run(
        [
            str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge",
            "--data", json.dumps(body),
            f"http://{address}/schedkit.v1.ScheduleService/{method}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.mark.skipif(not BUF.exists(), reason="buf comes with the dev extra (scripts/bootstrap)")
def test_buf_curl_with_reflection_only_schedules_lists_and_cancels(up: Up) -> None:
    types = buf_curl(up.address, "ListTaskTypes", {})
    water = {
        "name": "water_plants",
        "signature": "(plant: 'str', litres: 'float' = 1.0) -> 'str'",
        "doc": "Water a plant: records the watering and says how much it got.",
    }
    assert water in types["taskTypes"]  # type: ignore[operator]
    run_time = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    created = buf_curl(
        up.address,
        "ScheduleTask",
        {"spec": {"task": "water_plants", "args": ["basil"], "runTime": run_time}},
    )
    task = created["task"]
    assert isinstance(task, dict)
    assert created["outcome"] == "SCHEDULE_OUTCOME_CREATED"
    parked = buf_curl(
        up.address,
        "ScheduleTask",
        {"spec": {"task": "add", "args": [1, 2], "runTime": "2099-01-01T00:00:00Z"}},
    )["task"]
    assert isinstance(parked, dict)
    cancelled = buf_curl(up.address, "CancelTask", {"id": parked["id"]})["task"]
    assert cancelled["state"] == "TASK_STATE_CANCELLED"  # type: ignore[index]
    deadline = time.monotonic() + 30
    while True:  # poll with a timeout: buf curl has no watch mode for a single answer
        got = buf_curl(up.address, "GetTask", {"id": task["id"]})["task"]
        assert isinstance(got, dict)
        if got["state"] == "TASK_STATE_SUCCEEDED" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got["state"] == "TASK_STATE_SUCCEEDED"
    assert got["result"] == '"watered basil with 1.0 l"'
    listed = buf_curl(up.address, "ListTasks", {"filter": {"states": ["TASK_STATE_CANCELLED"]}})
    assert [t["id"] for t in listed["tasks"]] == [parked["id"]]  # type: ignore[attr-defined]


def test_bad_input_through_buf_curl_names_the_field(up: Up) -> None:
    if not BUF.exists():
        pytest.skip("buf comes with the dev extra (scripts/bootstrap)")
    done = subprocess.run(
        [str(BUF), "curl", "--protocol", "grpc", "--http2-prior-knowledge",
         "--data", json.dumps({"spec": {"task": "water_plant", "runTime": "2099-01-01T00:00:00Z"}}),
         f"http://{up.address}/schedkit.v1.ScheduleService/ScheduleTask"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    error = json.loads(done.stderr)
    assert error["code"] == "invalid_argument"
    assert "did you mean water_plants?" in error["message"]
    assert error["details"][0]["type"] == "google.rpc.BadRequest"


def test_buf_is_on_the_path_for_the_readme() -> None:
    assert BUF.exists() or shutil.which("buf"), "run scripts/bootstrap to install buf (buf-bin)"
