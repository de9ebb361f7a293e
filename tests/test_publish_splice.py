"""Stored args spliced into a message read as the decoded args would have been written."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from schedkit.dispatch.publish import Template, _args_parts, _encode, _repr
from schedkit.model import dumps
from schedkit.store.claimed import Claimed

RUN_AT = datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC)
TEMPLATE = Template(
    publish_kwargs={}, embed={}, argsrepr_size=1024, kwargsrepr_size=1024, repr_levels=3
)

SHAPES: list[list[Any]] = [
    [],
    [0],
    [7],
    [5, 1],
    [-3, 0, 12345678901234567890123],
    [2**70, -(2**64)],
    list(range(100)),
    [1] * 300,  # past the repr's size bound: saferepr's text
    [1.5, 2],
    [1e-7],
    ["fern", 2],
    ["a,b", "c:d"],
    [[1, 2], {"x": 1}],
    [True, None, False],
    ["ünïcode", "tab\there"],
]


def stored(args: list[Any]) -> Claimed:
    """A claim as the store returns it: args as their stored JSON text."""
    text = dumps(args) if args else ""
    return Claimed("t1", "add", None, None, RUN_AT, "", None, args_json=text, kwargs_json="")


@pytest.mark.parametrize("args", SHAPES, ids=repr)
def test_spliced_args_match_the_decoded_path(args: list[Any]) -> None:
    want = (_encode(args), _repr(tuple(args), 1024, 3))
    assert _args_parts(stored(args), TEMPLATE) == want


def test_claim_decodes_its_stored_text_on_first_use() -> None:
    claim = Claimed(
        "t1", "add", None, None, RUN_AT, "", None, args_json="[1,2]", kwargs_json='{"a":1}'
    )
    assert (claim.args, claim.kwargs) == ([1, 2], {"a": 1})
    assert claim == Claimed("t1", "add", [1, 2], {"a": 1}, RUN_AT, "", None)
