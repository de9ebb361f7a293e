"""The one retry policy: doubling waits up to a cap, reset by success, giving up on time."""

from __future__ import annotations

from schedkit.backoff import Backoff


class Clock:
    """A clock the test moves by hand: the policy's arithmetic, not real waiting."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_waits_double_up_to_the_cap_and_start_over_after_a_success() -> None:
    backoff = Backoff(first=0.5, factor=2, cap=3)
    assert [backoff.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.succeeded()
    assert backoff.failed() == 0.5


def test_gives_up_after_its_time_counted_from_the_first_failure() -> None:
    clock = Clock()
    backoff = Backoff(first=1, cap=8, give_up_after=5, clock=clock)
    assert not backoff.expired
    assert backoff.failed() == 1
    clock.now += 4
    assert backoff.failed() == 1  # cut to what is left
    assert not backoff.expired
    clock.now += 1
    assert backoff.expired
    assert backoff.failed() == 0
    backoff.succeeded()
    assert not backoff.expired
    assert backoff.remaining == 5
