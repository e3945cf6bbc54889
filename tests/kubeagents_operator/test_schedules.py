"""A team's schedule as pure functions: when a run is due, its name, the history to prune."""

from __future__ import annotations

import datetime

import pytest

from kubeagents_operator.runs import TeamSpec, team_problems
from kubeagents_operator.schedules import PastRun, Schedule, run_name, to_prune

UTC = datetime.UTC
CREATED = datetime.datetime(2026, 11, 23, 5, 0, 30, tzinfo=UTC)  # a Monday


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime.datetime:
    return datetime.datetime(2026, 11, day, hour, minute, second, tzinfo=UTC)


def test_a_cron_time_is_due_once_it_passed_and_not_before() -> None:
    schedule = Schedule(cron="0 6 * * 1-5", time_zone="UTC")
    assert schedule.due(since=CREATED, now=at(23, 5, 59, 59), created=CREATED) is None
    assert schedule.due(since=CREATED, now=at(23, 6, 0, 0), created=CREATED) == at(23, 6)
    # once it ran, the same time is not due again
    assert schedule.due(since=at(23, 6), now=at(23, 7), created=CREATED) is None


def test_times_missed_while_down_are_run_once_the_latest_only() -> None:
    schedule = Schedule(cron="0 6 * * 1-5")
    due = schedule.due(since=at(23, 6), now=at(27, 9), created=CREATED)
    assert due == at(27, 6)  # Tue, Wed, Thu missed: only Friday's runs


def test_cron_follows_the_time_zone() -> None:
    schedule = Schedule(cron="0 6 * * 1-5", time_zone="Europe/Berlin")
    # 06:00 in Berlin in November (CET, UTC+1) is 05:00 UTC
    assert schedule.due(since=CREATED - datetime.timedelta(hours=1), now=at(23, 5, 0, 1),
                        created=CREATED - datetime.timedelta(hours=1)) == at(23, 5)  # fmt: skip


def test_an_interval_counts_from_the_teams_creation() -> None:
    schedule = Schedule(interval_seconds=10)
    assert (
        schedule.due(since=CREATED, now=CREATED + datetime.timedelta(seconds=9), created=CREATED)
        is None
    )
    first = schedule.due(
        since=CREATED, now=CREATED + datetime.timedelta(seconds=25), created=CREATED
    )
    assert first == CREATED + datetime.timedelta(seconds=20)
    assert (
        schedule.due(since=first, now=CREATED + datetime.timedelta(seconds=29), created=CREATED)
        is None
    )


def test_the_run_name_is_the_same_for_the_same_time_so_a_repeat_creates_nothing() -> None:
    assert (
        run_name("report", at(23, 6)) == run_name("report", at(23, 6)) == "report-1795413600"
    )  # 2026-11-23T06:00:00Z
    assert run_name("report", at(23, 6)) != run_name("report", at(24, 6))
    assert len(run_name("t" * 253, at(23, 6))) <= 253


def test_history_beyond_the_limits_is_pruned_oldest_first_cancelled_counting_as_failed() -> None:
    runs = [
        PastRun("a", "Succeeded", "2026-11-23T06:00:00Z"),
        PastRun("b", "Failed", "2026-11-24T06:00:00Z"),
        PastRun("c", "Succeeded", "2026-11-25T06:00:00Z"),
        PastRun("d", "Cancelled", "2026-11-26T06:00:00Z"),
        PastRun("e", "Succeeded", "2026-11-27T06:00:00Z"),
        PastRun("f", "Running", "2026-11-28T06:00:00Z"),
    ]
    assert to_prune(runs, succeeded=2, failed=1) == ["a", "b"]
    assert to_prune(runs, succeeded=0, failed=0) == ["a", "c", "e", "b", "d"]


@pytest.mark.parametrize(
    ("schedule", "problem"),
    [
        ({"cron": "0 25 * * *"}, "schedule.cron: '0 25 * * *' is not a cron expression"),
        (
            {"cron": "0 6 * * *", "timeZone": "Mars/Olympus"},
            "schedule.timeZone: unknown time zone 'Mars/Olympus'",
        ),
        (
            {"intervalSeconds": 5, "input": {"topic": 3}},
            "schedule.input: at topic: 3 is not of type 'string'",
        ),
    ],
)
def test_a_bad_schedule_makes_the_team_invalid_naming_the_field(
    schedule: dict[str, object], problem: str
) -> None:
    team = TeamSpec.parse(
        {
            "roles": {"r": {"agent": "a"}},
            "inputSchema": {"type": "object", "properties": {"topic": {"type": "string"}}},
            "steps": [{"name": "s", "role": "r", "prompt": "p"}],
            "schedule": schedule,
        }
    )
    assert any(found.startswith(problem) for found in team_problems(team)), team_problems(team)
