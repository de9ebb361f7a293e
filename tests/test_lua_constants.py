"""What Python and the Lua scripts share is written in Python only: key names, states, bounds."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from importlib import resources

from conftest import schedule_ids
from schedkit.demo import app as demo_app
from schedkit.dispatch.registry import TaskRegistry
from schedkit.model import (
    FINAL_STATES,
    LATENESS_BUCKETS_MS,
    WAITING_STATES,
    TaskRows,
    TaskSpec,
    TaskState,
)
from schedkit.service.schedules import Schedules
from schedkit.settings import Settings
from schedkit.store.edits import LUA_FILES as EDIT_LUA
from schedkit.store.header import lua_header
from schedkit.store.keys import EVENT_IDS, EventField, Keys, Stat
from schedkit.store.query import TaskQuery
from schedkit.store.record import Field
from schedkit.store.schedules import LUA_FILES as SCHEDULE_LUA
from schedkit.store.scripts import SCRIPTS, script_text
from schedkit.store.store import Store

T0 = datetime(2030, 1, 1, 8, 0, tzinfo=UTC)
STATES = {state.value for state in TaskState}
_STATE_LITERAL = re.compile(r"'([A-Z]+)'")


def lua_sources() -> dict[str, str]:
    """Each hand-written Lua file, comments removed (they may name keys and states)."""
    package = resources.files("schedkit.store") / "lua"
    sources = {}
    for entry in package.iterdir():
        if entry.name.endswith(".lua"):
            lines = [line.split("--", 1)[0] for line in entry.read_text().splitlines()]
            sources[entry.name] = "\n".join(lines)
    names = ("prelude", *SCRIPTS, *SCHEDULE_LUA, *EDIT_LUA)
    assert sorted(sources) == sorted(f"{name}.lua" for name in names)
    return sources


def test_no_lua_file_spells_a_key_name_or_builds_one_from_the_prefix() -> None:
    spellings = ("':t:'", "':state:'", "':claims'", "':events'", "':stats'", "':wake'")
    built = re.compile(r"(\bprefix|ARGV\[1\])\s*\.\.")
    for name, source in lua_sources().items():
        for spelled in spellings:
            assert spelled not in source, f"{name} spells the key part {spelled}"
        assert not built.search(source), f"{name} builds a key from the prefix"
        # KEYS get their names in the generated header only, in the order keys.py passes them.
        assert "KEYS[" not in source, f"{name} reads KEYS by position"


def test_no_lua_file_lists_final_states_bounds_or_waiting_states() -> None:
    table = re.compile(r"\{[^{}]*\}")
    numbers = re.compile(r"\{\s*\d+\s*(,\s*\d+\s*){2,}\}")
    comparisons = re.compile(r"[~=]=\s*'([A-Z]+)'")
    for name, source in lua_sources().items():
        for literal in table.findall(source):
            listed = [s for s in _STATE_LITERAL.findall(literal) if s in STATES]
            assert len(listed) < 2, f"{name} lists states {listed}: take them from the header"
        assert not numbers.search(source), f"{name} lists numbers: bounds come from the header"
        for line in source.splitlines():
            compared = [s for s in comparisons.findall(line) if s in STATES]
            assert len(compared) < 2, f"{name} tests a state against a list: {line.strip()}"


def test_no_lua_file_spells_a_stats_field() -> None:
    spelled = re.compile(r"count\('|'HINCRBY', stats, '")
    for name, source in lua_sources().items():
        assert not spelled.search(source), f"{name} spells a stats field: use stat.<name>"


def test_no_lua_file_spells_a_record_field() -> None:
    stored = set(Field.names().values())
    for name, source in lua_sources().items():
        for line in source.splitlines():
            if "'XADD'" in line or "'id', table.concat" in line:
                continue  # the event stream's own fields ('id', 's'), not the record's
            quoted = set(re.findall(r"'([^']*)'", line)) & stored
            assert not quoted, f"{name} spells record fields {quoted}: use field.<name>"


def test_every_state_a_lua_file_names_is_a_task_state() -> None:
    redis_words = re.compile(r"redis\.call\('[A-Z]+'|'(MAXLEN|LIMIT|WITHSCORES)'")
    for name, source in lua_sources().items():
        for literal in _STATE_LITERAL.findall(redis_words.sub("", source)):
            assert literal in STATES, f"{name} names {literal!r}, which is not a TaskState"


def _line(header: str, name: str) -> str:
    (line,) = [line for line in header.splitlines() if line.startswith(f"local {name} =")]
    return line


def test_the_header_spells_the_python_constants_once_each() -> None:
    header = lua_header()
    finals = _line(header, "final_states")
    for state in TaskState:
        assert finals.count(f"'{state.value}'") == (1 if state in FINAL_STATES else 0)
    waiting = _line(header, "waiting_states")
    for state in TaskState:
        assert waiting.count(f"{state.value} = true") == (1 if state in WAITING_STATES else 0)
    bounds = re.findall(r"\d+", _line(header, "late_bounds"))
    assert bounds == [str(bound) for bound in LATENESS_BUCKETS_MS]
    # Once in the whole header (small bounds are also KEYS positions; event_ids is its own).
    others = header.replace(f"local event_ids = {EVENT_IDS}", "")
    for bound in LATENESS_BUCKETS_MS:
        assert bound <= 12 or len(re.findall(rf"\b{bound}\b", others)) == 1
    events = _line(header, "event_field")
    assert all(events.count(f"{f.name.lower()} = '{f.value}'") == 1 for f in EventField)
    assert f"local event_ids = {EVENT_IDS}" in header
    stats = _line(header, "stat")
    assert all(stats.count(f"{s.name.lower()} = '{s.value}'") == 1 for s in Stat)
    fields = _line(header, "field")
    assert all(fields.count(f"{k.lower()} = '{v}'") == 1 for k, v in Field.names().items())
    assert len(Field.names()) == 19
    # Every script starts with this very header.
    assert all(script_text(name).startswith(header) for name in SCRIPTS)


def test_the_header_names_keys_in_the_order_the_store_passes_them(store: Store) -> None:
    keys = Keys("other:prefix")
    names = (
        "claims, events, stats, wake, flight, "
        + ", ".join(f"state_keys['{s.value}']" for s in TaskState)
        + ", final_states, late_bounds"
    )
    probe = lua_header() + f"return {{{names}}}"
    got = store.redis.eval(probe, len(keys.script_keys()), *keys.script_keys())
    assert got[:-2] == keys.script_keys()
    assert got[-2] == [s.value for s in TaskState if s in FINAL_STATES]
    assert got[-1] == list(LATENESS_BUCKETS_MS)


def test_the_scripts_are_the_same_text_in_every_process() -> None:
    # Set order of strings differs between processes: a header from a set would change SHAs.
    program = (
        "import hashlib\nfrom schedkit.store.scripts import SCRIPTS, script_text\n"
        "print(hashlib.sha1(''.join(map(script_text, SCRIPTS)).encode()).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", program],
            env={"PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(digests) == 1


def test_a_store_touches_only_keys_under_its_own_prefix(store: Store, redis_url: str) -> None:
    other = Store.from_url(redis_url, prefix="other")
    try:
        soon = [TaskSpec("add", T0 + timedelta(seconds=n), [1, n], key=f"k{n}") for n in range(4)]
        schedules = Schedules(other, TaskRegistry(demo_app), Settings(store_url=redis_url))
        ids = schedule_ids(schedules, soon, now=T0)
        claimed = other.claim(window_seconds=60, lease_seconds=5, limit=2, now=T0)
        other.mark_queued([claimed[0].id], now=T0)
        assert other.start(claimed[0].id, now=T0) == "started"
        assert other.finish(claimed[0].id, TaskState.SUCCEEDED, now=T0)
        assert other.cancel(ids[3], now=T0)[0] == "cancelled"
        assert other.redeliver(stale_seconds=0, now=T0 + timedelta(hours=1)) == []
        assert other.purge(finished_before=T0 + timedelta(days=1)) == 2
        records, _ = other.page(TaskQuery(), page_size=10)
        assert [r.id for r in records] == [ids[2]]  # ids[1] is claimed: in no state index
        assert all(str(key).startswith("other:") for key in store.redis.keys("*"))
        assert store.page(TaskQuery(), page_size=10) == ([], "")
    finally:
        other.close()


def _calls(store: Store) -> dict[str, int]:
    # Script calls and script loading only: commands a script runs are counted here too.
    stats = store.redis.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    return {
        name: calls[name]
        for name in ("eval", "evalsha", "script|exists", "script|load")
        if name in calls
    }


def test_a_batch_is_one_script_call_and_a_page_one_evalsha_per_state(
    store: Store, schedules: Schedules
) -> None:
    soon = [TaskSpec("add", T0 + timedelta(seconds=n), [1, n]) for n in range(300)]
    schedule_ids(schedules, soon[:1], now=T0)  # loads the script
    store.page(TaskQuery(), page_size=10)
    batch = schedules.prepare_rows(TaskRows.of_specs(soon), now=T0)
    store.redis.config_resetstat()
    schedules.store_prepared(batch)
    assert _calls(store) == {"evalsha": 1}
    store.redis.config_resetstat()
    records, _ = store.page(TaskQuery(), page_size=10)
    assert len(records) == 10
    # One pipeline of one EVALSHA per state index; no SCRIPT EXISTS before it.
    assert _calls(store) == {"evalsha": len(TaskState)}
