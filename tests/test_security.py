"""Who may call: bearer tokens, TLS and mTLS with certificates made here, the loopback rule."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from schedkit.cli import main as cli_main
from schedkit.client.client import Client
from schedkit.errors import ConfigError, Unauthenticated, Unavailable
from schedkit.model import TaskSpec, TaskState
from schedkit.scheduler import main as scheduler_main
from schedkit.service.auth import check_exposure, is_loopback
from schedkit.service.schedules import Schedules
from schedkit.service.server import Server
from schedkit.settings import Settings

TOKEN = "correct-horse-battery-staple"


@contextlib.contextmanager
def serving(schedules: Schedules, **changes: object) -> Iterator[Server]:
    settings = replace(schedules.settings, listen="127.0.0.1:0", **changes)  # type: ignore[arg-type]
    server = Server(schedules, settings=settings).start()
    try:
        yield server
    finally:
        server.stop(0)


def later() -> datetime:
    return datetime.now(UTC) + timedelta(hours=1)


def test_calls_without_the_token_are_unauthenticated_and_write_nothing(
    schedules: Schedules,
) -> None:
    with serving(schedules, token=TOKEN) as server:
        with Client.connect(server.address, token="") as anonymous:
            with pytest.raises(Unauthenticated, match="missing credentials"):
                anonymous.task_types()
            with pytest.raises(Unauthenticated, match="missing credentials"):
                list(anonymous.schedule_many([TaskSpec("add", later(), [1, 2])]))
            with pytest.raises(Unauthenticated):
                anonymous.watch(timeout=5)
        with (
            Client.connect(server.address, token="wrong") as wrong,
            pytest.raises(Unauthenticated, match="invalid token"),
        ):
            wrong.schedule("add", 1, 2, run_at=later())
    assert schedules.store.count(TaskState.SCHEDULED) == 0


def test_the_right_token_is_accepted_on_every_kind_of_call(schedules: Schedules) -> None:
    with (
        serving(schedules, token=TOKEN) as server,
        Client.connect(server.address, token=TOKEN) as c,
    ):
        assert "add" in {t.name for t in c.task_types()}
        task = c.schedule("add", 1, 2, run_at=later())
        (streamed,) = list(c.schedule_many([TaskSpec("add", later(), [3, 4])]))
        assert c.get(streamed.id).state is TaskState.SCHEDULED
        with contextlib.closing(c.watch(ids=[task.id], timeout=10)) as changes:
            c.cancel(task.id)
            assert next(changes).state is TaskState.CANCELLED


def test_health_and_reflection_answer_without_a_token(schedules: Schedules) -> None:
    with serving(schedules, token=TOKEN) as server, grpc.insecure_channel(server.address) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(ch)
        (reply,) = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for s in reply.list_services_response.service}
        assert "schedkit.v1.ScheduleService" in names


def test_a_token_file_holds_several_tokens_for_rotation(
    schedules: Schedules, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("old-token\n\nnew-token\n")
    with serving(schedules, token_file=str(tokens)) as server:
        for token in ("old-token", "new-token"):
            with Client.connect(server.address, token=token) as client:
                assert client.task_types()
        with Client.connect(server.address, token="new") as client, pytest.raises(Unauthenticated):
            client.task_types()


def test_client_reads_the_token_from_the_environment(
    schedules: Schedules, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCHEDKIT_TOKEN", TOKEN)
    with serving(schedules, token=TOKEN) as server, Client.connect(server.address) as client:
        assert client.task_types()


def test_scheduler_sends_its_token_and_says_when_refused(
    schedules: Schedules, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "t.csv"
    table.write_text(f'task,run_at,args\nadd,{later():%Y-%m-%dT%H:%M:%SZ},"[1, 2]"\n')
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with serving(schedules, token=TOKEN) as server:
        base = [str(table), "--server", server.address, "-q", "--retry-for", "1s"]
        assert scheduler_main([*base, "--token", "nope"]) == 2
        assert "invalid token" in capsys.readouterr().err
        assert scheduler_main([*base, "--token-file", str(token_file)]) == 0
    assert schedules.store.count(TaskState.SCHEDULED) == 1


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def pem_files(tmp_path: Path, ca: trustme.CA, *names: str) -> dict[str, str]:
    """CA, certificate and key as files, the certificate issued by ``ca`` for ``names``."""
    cert = ca.issue_cert(*names)
    tmp_path.mkdir(parents=True, exist_ok=True)
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    return {k: str(v) for k, v in files.items()}


def test_tls_server_with_a_generated_certificate(
    schedules: Schedules, tmp_path: Path, ca: trustme.CA
) -> None:
    server_pem = pem_files(tmp_path, ca, "127.0.0.1", "localhost")
    with serving(schedules, tls_cert=server_pem["cert"], tls_key=server_pem["key"]) as server:
        assert server.tls
        with Client.connect(server.address, tls_ca=server_pem["ca"]) as client:
            assert client.schedule("add", 1, 2, run_at=later()).state is TaskState.SCHEDULED
        # A plaintext client cannot talk to it, and a client trusting another CA refuses it.
        with pytest.raises(Unavailable):
            Client.connect(server.address, tls=False, wait_ready=1).task_types()
        other = pem_files(tmp_path / "other", trustme.CA(), "127.0.0.1")
        with pytest.raises(Unavailable, match="TLS"):
            Client.connect(server.address, tls_ca=other["ca"], wait_ready=1)


def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    schedules: Schedules, tmp_path: Path, ca: trustme.CA
) -> None:
    server_pem = pem_files(tmp_path / "server", ca, "127.0.0.1")
    client_pem = pem_files(tmp_path / "client", ca, "analyst@example.org")
    stranger = pem_files(tmp_path / "stranger", trustme.CA(), "mallory@example.org")
    with serving(
        schedules, tls_cert=server_pem["cert"], tls_key=server_pem["key"], tls_ca=server_pem["ca"]
    ) as server:
        with Client.connect(
            server.address,
            tls_ca=server_pem["ca"],
            tls_cert=client_pem["cert"],
            tls_key=client_pem["key"],
        ) as client:
            assert client.task_types()
        for cert, key in ((None, None), (stranger["cert"], stranger["key"])):
            with pytest.raises(Unavailable):
                Client.connect(
                    server.address,
                    tls_ca=server_pem["ca"],
                    tls_cert=cert,
                    tls_key=key,
                    wait_ready=2,
                ).task_types()


def test_tls_and_token_together(schedules: Schedules, tmp_path: Path, ca: trustme.CA) -> None:
    pem = pem_files(tmp_path, ca, "127.0.0.1")
    with serving(schedules, token=TOKEN, tls_cert=pem["cert"], tls_key=pem["key"]) as server:
        with Client.connect(server.address, tls_ca=pem["ca"], token=TOKEN) as client:
            assert client.task_types()
        with (
            Client.connect(server.address, tls_ca=pem["ca"], token="") as client,
            pytest.raises(Unauthenticated),
        ):
            client.task_types()


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.0.0.2:0", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.1.2.3:50051", False),
        ("schedkit.internal:50051", False),
    ],
)
def test_loopback_addresses(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def test_a_public_address_needs_a_token_mtls_or_insecure(tmp_path: Path) -> None:
    public = Settings(listen="0.0.0.0:0")
    with pytest.raises(ConfigError, match="--insecure"):
        check_exposure(public)
    check_exposure(replace(public, insecure=True))
    check_exposure(replace(public, token=TOKEN))
    check_exposure(replace(public, tls_cert="c.pem", tls_key="k.pem", tls_ca="ca.pem"))
    # TLS without client certificates encrypts but does not say who calls.
    with pytest.raises(ConfigError):
        check_exposure(replace(public, tls_cert="c.pem", tls_key="k.pem"))


def test_schedkit_serve_refuses_a_public_address_without_a_token(
    redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SCHEDKIT_TOKEN", "SCHEDKIT_TOKEN_FILE", "SCHEDKIT_INSECURE"):
        monkeypatch.delenv(name, raising=False)
    assert cli_main(["serve", "--store", redis_url, "--listen", "0.0.0.0:0"]) == 2
    assert "refusing to listen on 0.0.0.0:0 without authentication" in capsys.readouterr().err


def test_unreadable_tls_files_are_named(schedules: Schedules, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match=r"cannot read the TLS (key|certificate) .*nope\.pem"):
        Server(schedules, settings=replace(schedules.settings, tls_cert=missing, tls_key=missing))
    with pytest.raises(ConfigError, match="both"):
        Server(schedules, settings=replace(schedules.settings, tls_cert=missing))
