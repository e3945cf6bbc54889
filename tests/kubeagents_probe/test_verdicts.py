"""Hysteresis of a check (kubeagents_probe.verdicts): pure logic, no processes."""

from __future__ import annotations

import json

from kubeagents_probe.verdicts import CheckResult, CheckState, Thresholds

THRESHOLDS = Thresholds(failure=3, success=2)


def result(passed: bool) -> CheckResult:
    return CheckResult(
        check="semantic", passed=passed, at=1.0, latency_ms=5.0, reason="" if passed else "bad"
    )


def run(state: CheckState, *outcomes: bool) -> list[bool | None]:
    seen = []
    for passed in outcomes:
        state = state.record(result(passed), THRESHOLDS)
        seen.append(state.passing)
    return seen


def test_a_check_is_pending_until_its_first_pass_which_counts_at_once() -> None:
    assert CheckState().passing is None
    assert run(CheckState(), False, False, False, False, True) == [None, None, None, None, True]


def test_failure_threshold_consecutive_failures_make_a_passing_check_fail() -> None:
    assert run(CheckState(), True, False, False, True, False, False, False) == [
        True,
        True,
        True,
        True,  # a pass in between starts the count again
        True,
        True,
        False,
    ]


def test_success_threshold_consecutive_passes_make_a_failing_check_pass_again() -> None:
    failed = CheckState()
    for passed in (True, False, False, False):
        failed = failed.record(result(passed), THRESHOLDS)
    assert failed.passing is False
    assert run(failed, True, False, True, True) == [False, False, False, True]


def test_state_round_trips_through_json() -> None:
    state = CheckState().record(result(True), THRESHOLDS).record(result(False), THRESHOLDS)
    again = CheckState.from_json(json.loads(json.dumps(state.to_json())))
    assert again == state
    assert again.consecutive_failures == 1
    assert again.last is not None
    assert again.last.reason == "bad"
