"""The template cache: bounded in bytes, least recently used out first, and holding only
templates that passed every check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schedkit.errors import InvalidArgument
from schedkit.model import Outcome, TaskSpec, to_micros
from schedkit.service.schedules import Schedules
from schedkit.settings import Settings
from schedkit.v1 import schedule_service_pb2 as pb
from schedkit.wire.cache import ByteBoundedLRU, TemplateCache
from schedkit.wire.convert import rows_from_columns


def test_entries_past_the_budget_evict_the_least_recently_used() -> None:
    cache: ByteBoundedLRU[str, int] = ByteBoundedLRU(max_bytes=300)
    cache.put("a", 1, 100)
    cache.put("b", 2, 100)
    cache.put("c", 3, 100)
    assert cache.get("a") == 1  # now the most recently used
    cache.put("d", 4, 100)
    assert cache.get("b") is None
    assert [cache.get(k) for k in "acd"] == [1, 3, 4]
    assert cache.charged_bytes == 300
    cache.put("huge", 5, 301)  # larger than the whole budget: not kept, nothing evicted
    assert cache.get("huge") is None
    assert len(cache) == 3


def test_replacing_an_entry_charges_it_once() -> None:
    cache: ByteBoundedLRU[str, int] = ByteBoundedLRU(max_bytes=1000)
    cache.put("a", 1, 100)
    cache.put("a", 2, 200)
    assert (cache.get("a"), cache.charged_bytes, len(cache)) == (2, 200, 1)


def test_a_template_cache_stays_within_its_budget() -> None:
    cache = TemplateCache(max_bytes=64 * 1024)
    for number in range(1000):
        cache.put(b"x" * 100 + str(number).encode(), TaskSpec("add", datetime.now(UTC)))
    assert 0 < cache.charged_bytes <= 64 * 1024
    assert len(cache) < 1000


def test_limits_follow_the_settings() -> None:
    cache = TemplateCache.for_settings(Settings(max_args_bytes=1000, max_batch=7))  # type: ignore[arg-type]
    assert cache.max_templates == 7
    assert 6000 < cache.max_template_bytes < 6000 + 300 * 1024


def _batch(*templates: pb.TaskSpec) -> pb.TaskColumns:
    at = to_micros(datetime.now(UTC) + timedelta(hours=1))
    return pb.TaskColumns(
        templates=templates,
        template_index=list(range(len(templates))),
        run_time_micros=[at] * len(templates),
    )


def _template(task: str, *args: object) -> pb.TaskSpec:
    msg = pb.TaskSpec(task=task)
    msg.args.extend(list(args))
    return msg


def test_only_templates_that_pass_every_check_are_kept(schedules: Schedules) -> None:
    cache = TemplateCache()
    good = _template("add", 1, 2)
    unknown = _template("no_such_task", 1)
    unbound = _template("add", 1, 2, 3)  # converts, but the registry refuses it
    big = _template("add", "x" * (schedules.settings.max_args_bytes + 1), 1)  # too large
    # As ScheduleTasks takes a batch of columns: convert, prepare, store.
    rows = rows_from_columns(_batch(good, unknown, unbound, big), known=cache)
    results = schedules.store_prepared(schedules.prepare_rows(rows))
    assert [r.outcome for r in results] == [Outcome.CREATED] + [Outcome.REJECTED] * 3
    assert len(cache) == 1
    assert cache.get(good.SerializeToString(deterministic=True)) is not None
    again = rows_from_columns(_batch(good), known=cache)
    assert again.templates[0] is cache.get(good.SerializeToString(deterministic=True))


def test_a_template_larger_than_any_accepted_task_is_not_converted() -> None:
    cache = TemplateCache(max_args_bytes=1000)
    rows = rows_from_columns(_batch(_template("add", "x" * 300_000, 1)), known=cache)
    (error,) = rows.templates
    assert isinstance(error, InvalidArgument)
    assert error.violations[0].field == "columns.templates[0].args"
    assert "the template takes" in error.message


@pytest.mark.parametrize("templates", [2, 9])
def test_a_batch_may_not_carry_spare_templates(templates: int) -> None:
    batch = _batch(*[_template("add", n, 1) for n in range(templates)])
    del batch.template_index[1:]
    del batch.run_time_micros[1:]
    with pytest.raises(InvalidArgument, match="templates for 1 rows") as caught:
        rows_from_columns(batch, "batch 3: ", known=TemplateCache(max_batch=8))
    assert caught.value.violations[0].field == "batch 3: columns.templates"


def test_no_more_templates_than_the_batch_limit() -> None:
    batch = _batch(*[_template("add", n, 1) for n in range(9)])
    with pytest.raises(InvalidArgument, match="at most 8"):
        rows_from_columns(batch, known=TemplateCache(max_batch=8))
