"""What the notebook widgets share: showing errors in the widget, tables as HTML, small parsers.

ipywidgets' ``Button.click()`` only logs a callback's exception, and ``with out:`` shows it only
inside a running kernel; :class:`Feedback` catches it and writes it into the widget itself, so
the error is visible in a notebook, in Voila and to a test alike.
"""

from __future__ import annotations

import ast
import html
import inspect
import json
import threading
import traceback
from collections.abc import Callable, Iterable
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import available_timezones

import ipywidgets as widgets
import pandas as pd

from schedkit.errors import InvalidArgument, SchedkitError

ERROR_CLASS = "schedkit-error"
OK_CLASS = "schedkit-ok"
# Small, self-contained styles: the same HTML reads well in JupyterLab, Voila and a screenshot.
# The class is doubled: JupyterLab's rules for rendered HTML (two classes) right-align headers.
TABLE_STYLE = (
    "<style>.schedkit-table{border-collapse:collapse;font-size:12px;font-family:monospace}"
    ".schedkit-table.schedkit-table th,.schedkit-table.schedkit-table td{"
    "border:1px solid #ccc;padding:2px 6px;"
    "text-align:left;white-space:nowrap}.schedkit-table th{background:#f3f3f3}"
    ".schedkit-error{color:#b00020}.schedkit-ok{color:#1b5e20}</style>"
)


def zone_names() -> list[str]:
    """Every IANA zone name this Python knows, sorted, UTC first."""
    return ["UTC", *sorted(available_timezones() - {"UTC"})]


def describe(exc: BaseException) -> str:
    """One readable paragraph for an error: its message and each field it names."""
    if isinstance(exc, SchedkitError):
        lines = [exc.message]
        lines += [
            f"{v.field}: {v.description}"
            for v in exc.violations
            if v.description not in exc.message
        ]
        return "\n".join(lines)
    return f"{type(exc).__name__}: {exc}"


def error_html(text: str) -> str:
    """``text`` as a red, escaped block."""
    return f'<pre class="{ERROR_CLASS}" style="color:#b00020;margin:0">{html.escape(text)}</pre>'


def ok_html(text: str) -> str:
    """``text`` as a green, escaped line."""
    return f'<span class="{OK_CLASS}" style="color:#1b5e20">{html.escape(text)}</span>'


class Feedback:
    """A status line and an Output: what a widget says, and where its errors go."""

    def __init__(self) -> None:
        self.message = widgets.HTML()
        self.out = widgets.Output()
        self._lock = threading.Lock()

    def ok(self, text: str) -> None:
        """Show a success line."""
        self.message.value = ok_html(text)

    def clear_error(self) -> None:
        """Take an error off the status line (its cause was fixed); a success line stays."""
        if ERROR_CLASS in self.message.value:
            self.message.value = ""

    def error(self, exc: BaseException) -> None:
        """Show ``exc`` in the widget; an unexpected one with its traceback."""
        self.message.value = error_html(describe(exc))
        if not isinstance(exc, SchedkitError):
            self.out.append_stderr("".join(traceback.format_exception(exc)))

    def guard(self, action: Callable[..., object]) -> Callable[..., None]:
        """``action`` wrapped for a callback: run inside ``with out:``, errors shown here."""

        def run(*args: Any) -> None:
            # In a kernel, prints of the action land in the widget's Output too.
            with self.out:
                try:
                    action(*args)
                except Exception as exc:  # shown in the widget, never only logged
                    self.error(exc)

        return run


def json_value(text: str, kind: type, field: str, example: str) -> Any:
    """Parse ``text`` as JSON of type ``kind`` ('' is empty), or InvalidArgument naming field."""
    if not text.strip():
        return kind()
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument.for_field(
            field, f"not valid JSON ({exc}); expected {example}"
        ) from exc
    if not isinstance(value, kind):
        raise InvalidArgument.for_field(field, f"expected {example}, got {type(value).__name__}")
    return value


def parse_labels(text: str, field: str = "labels") -> dict[str, str]:
    """``team=ops, env=dev`` (or a JSON object) as a dict of strings."""
    text = text.strip()
    if text.startswith("{"):
        value = json_value(text, dict, field, 'a JSON object such as {"team": "ops"}')
        return {str(k): str(v) for k, v in value.items()}
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, equals, value = part.partition("=")
        if not equals or not name.strip():
            raise InvalidArgument.for_field(
                field, f"{part!r} is not name=value; write team=ops, env=dev"
            )
        labels[name.strip()] = value.strip()
    return labels


def signature_from_text(text: str) -> inspect.Signature | None:
    """An inspect.Signature from ``(a, b: int = 1, *args)``, to check arguments as they are
    typed; None when the text is not plain Python (a default with no literal form)."""
    try:
        node = ast.parse(f"def f{text}: pass").body[0]
    except SyntaxError:
        return None
    if not isinstance(node, ast.FunctionDef):
        return None
    spec = node.args
    kind = inspect.Parameter
    params: list[inspect.Parameter] = []
    positional = [*spec.posonlyargs, *spec.args]
    first_default = len(positional) - len(spec.defaults)
    for number, arg in enumerate(positional):
        params.append(
            kind(
                arg.arg,
                kind.POSITIONAL_ONLY
                if number < len(spec.posonlyargs)
                else kind.POSITIONAL_OR_KEYWORD,
                default=None if number >= first_default else kind.empty,
            )
        )
    if spec.vararg:
        params.append(kind(spec.vararg.arg, kind.VAR_POSITIONAL))
    for arg, default in zip(spec.kwonlyargs, spec.kw_defaults, strict=True):
        params.append(
            kind(arg.arg, kind.KEYWORD_ONLY, default=kind.empty if default is None else None)
        )
    if spec.kwarg:
        params.append(kind(spec.kwarg.arg, kind.VAR_KEYWORD))
    return inspect.Signature(params)


def instant(value: datetime | None, tz: str | tzinfo | None, field: str) -> datetime | None:
    """A picker's naive wall-clock time read in ``tz``, as an aware UTC datetime."""
    from schedkit.timeutil import to_instant

    return None if value is None else to_instant(value, tz=tz, field=field)


def html_table(frame: pd.DataFrame, empty: str) -> str:
    """A DataFrame as a compact HTML table (escaped), or ``empty`` when it has no rows."""
    if not len(frame):
        return f"<i>{html.escape(empty)}</i>"
    # Scrolled sideways when wider than the cell, not cut at its edge.
    table = frame.to_html(index=False, escape=True, classes="schedkit-table", na_rep="")
    return f'{TABLE_STYLE}<div style="overflow-x:auto">{table}</div>'


def fmt_time(value: Any, with_zone: bool = True) -> str:
    """A timestamp as ``2026-01-20 08:00:00 CET`` ('' for NaT)."""
    if value is None or pd.isna(value):
        return ""
    return str(pd.Timestamp(value).strftime("%Y-%m-%d %H:%M:%S" + (" %Z" if with_zone else "")))


def fmt_duration(value: Any) -> str:
    """A timedelta as seconds with millisecond precision ('' for NaT)."""
    if value is None or pd.isna(value):
        return ""
    return f"{pd.Timedelta(value).total_seconds():.3f} s"


def short_json(values: Iterable[Any]) -> list[str]:
    """JSON text of each value, for a table cell."""
    return [json.dumps(v, ensure_ascii=False, default=str) for v in values]
