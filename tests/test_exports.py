"""The public surface is deliberate: adding or removing a name must change this test."""

import subprocess
import sys

import schedkit


def test_public_names_are_pinned() -> None:
    assert sorted(schedkit.__all__) == [
        "AlreadyExists",
        "Client",
        "ConfigError",
        "FailedPrecondition",
        "FieldViolation",
        "InvalidArgument",
        "NotFound",
        "Outcome",
        "ResourceExhausted",
        "SchedkitError",
        "ScheduleResult",
        "Scheduled",
        "Settings",
        "Stack",
        "TaskRecord",
        "TaskSpec",
        "TaskState",
        "TaskType",
        "Unauthenticated",
        "Unavailable",
        "install",
        "read_timetable",
    ]
    for name in schedkit.__all__:
        assert getattr(schedkit, name) is not None


def test_every_error_is_a_schedkit_error() -> None:
    for name in schedkit.__all__:
        value = getattr(schedkit, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, schedkit.SchedkitError), name


def test_notebook_names_are_pinned_and_stay_out_of_the_core_import() -> None:
    import schedkit.notebook

    assert sorted(schedkit.notebook.__all__) == ["ScheduleBuilder", "ScheduleInspector", "timeline"]
    # A fresh interpreter: `import schedkit` alone must not pull in the notebook stack.
    probe = (
        "import sys, schedkit\n"
        "print(sorted(m for m in ('ipywidgets', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_workers_and_servers_do_not_load_pandas() -> None:
    """pandas costs a worker tens of MB; only timetable code may import it."""
    code = (
        "import sys, schedkit, schedkit.dispatch.worker, schedkit.service.server;"
        "import schedkit.runtime.stack;"
        "print('pandas' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"
    assert callable(schedkit.read_timetable)  # still there, imported on first use


def test_the_client_loads_neither_celery_pandas_nor_redis() -> None:
    """A notebook or script that only schedules pays for gRPC, not for the server side."""
    probe = (
        "import sys, schedkit\n"
        "client = schedkit.Client\n"
        "heavy = ('celery', 'kombu', 'redis', 'pandas', 'schedkit.service', 'schedkit.store')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
    assert schedkit.Stack.__name__ == "Stack"  # the heavy names are still there, on first use
    assert callable(schedkit.install)


def test_aio_names_are_pinned_and_load_neither_celery_pandas_nor_redis() -> None:
    """An asyncio service that only schedules pays for gRPC, as the blocking client does."""
    import schedkit.aio

    assert sorted(schedkit.aio.__all__) == ["Client", "Watch"]
    probe = (
        "import sys, schedkit.aio\n"
        "heavy = ('celery', 'kombu', 'redis', 'pandas', 'schedkit.service', 'schedkit.store')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
