"""ReadAhead: an iterator produced in a thread of its own, in order, errors in place."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from schedkit.readahead import ReadAhead


def test_items_arrive_in_order_and_the_producer_runs_ahead() -> None:
    produced: list[int] = []
    second_made = threading.Event()

    def items() -> Iterator[int]:
        for n in range(5):
            produced.append(n)
            if n == 1:
                second_made.set()
            yield n

    reader = iter(ReadAhead(items(), depth=2))
    assert next(reader) == 0
    # While the consumer holds item 0, the producer makes the next ones on its own.
    assert second_made.wait(5)
    assert list(reader) == [1, 2, 3, 4]
    assert produced == [0, 1, 2, 3, 4]


def test_an_error_is_raised_in_its_place() -> None:
    def items() -> Iterator[int]:
        yield 1
        raise ValueError("batch 1: bad")

    reader = iter(ReadAhead(items()))
    assert next(reader) == 1
    with pytest.raises(ValueError, match="batch 1: bad"):
        next(reader)


def test_leaving_early_stops_the_producer() -> None:
    def endless() -> Iterator[int]:
        n = 0
        while True:
            yield n
            n += 1

    ahead = ReadAhead(endless(), depth=1)
    for n in ahead:
        if n == 3:
            break
    assert ahead.join(5), "the producer kept going after its consumer left"
