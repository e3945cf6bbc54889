"""The one backoff policy: exponential from base, capped, jitter in the upper half."""

from __future__ import annotations

import pytest

from kubeagents.backoff import Backoff


def test_without_jitter_the_wait_doubles_up_to_the_cap() -> None:
    backoff = Backoff(base=0.5, cap=5.0, jitter=False)
    assert [backoff.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


@pytest.mark.parametrize(("fraction", "factor"), [(0.0, 0.5), (0.5, 0.75), (1.0, 1.0)])
def test_jitter_draws_from_the_upper_half_of_the_nominal_wait(
    fraction: float, factor: float
) -> None:
    backoff = Backoff(base=1.0, cap=60.0)
    assert backoff.delay(3, lambda: fraction) == pytest.approx(8.0 * factor)


def test_a_huge_attempt_number_stays_at_the_cap() -> None:
    assert Backoff(base=0.05, cap=5.0, jitter=False).delay(10_000) == 5.0


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (2.0, 1.0), (-1.0, 1.0)])
def test_a_policy_that_cannot_hold_is_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="backoff needs 0 < base <= cap"):
        Backoff(base=base, cap=cap)


def test_a_negative_attempt_is_refused() -> None:
    with pytest.raises(ValueError, match="attempt must be >= 0"):
        Backoff(base=1.0, cap=2.0).delay(-1)
