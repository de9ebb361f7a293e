"""Settings.to_env: every field survives the trip through a child process's environment."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from schedkit.runtime.stack import Stack
from schedkit.settings import Settings


def unusual(field: dataclasses.Field[Any]) -> Any:
    """A value of the field's type that is not its default."""
    default = Settings()
    value = getattr(default, field.name)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 3
    if isinstance(value, float):
        return value + 0.25
    if isinstance(value, Path):
        return value / "elsewhere"
    return f"{value}-x" if value else "x"


def test_every_field_comes_back_from_the_environment() -> None:
    changed = {f.name: unusual(f) for f in dataclasses.fields(Settings)}
    settings = Settings(**changed)
    back = Settings.from_env(settings.to_env())
    for name, value in changed.items():
        assert getattr(back, name) == value, name
    assert back == settings


def test_defaults_come_back_as_defaults() -> None:
    assert Settings.from_env(Settings().to_env()) == Settings()


def test_the_stacks_worker_gets_every_setting_but_the_token(tmp_path: Path) -> None:
    settings = Settings(
        store_url="redis://127.0.0.1:1/0", overlap_buffer=7.5, token="secret", data_dir=tmp_path
    )
    env = Stack(settings).worker_env()
    assert Settings.from_env(env) == dataclasses.replace(settings, token="")
    assert "SCHEDKIT_TOKEN" not in env
