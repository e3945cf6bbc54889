"""A team's `schedule` as pure functions, with CronJob's semantics.

- `Schedule.parse` reads `spec.schedule`: a `cron` expression (five fields, in `timeZone`,
  default UTC) or `intervalSeconds` (every N seconds from the team's creation: for tests and
  frequent polling, where cron's minute is too coarse).
- `due` is the latest scheduled time after the last one the team ran (or its creation) and not
  after `now`: times missed while the operator was down are not all run, only the latest, once.
- `run_name` is deterministic in the team and the scheduled time, so a restart that repeats a
  time creates nothing (the API server answers AlreadyExists): no time ever fires twice.
- `to_prune` picks the ended runs past `runsHistoryLimit`, oldest first.
"""

from __future__ import annotations

import datetime
import hashlib
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cronsim

UTC = datetime.UTC
TEAM_LABEL = "kubeagents.io/team"
SCHEDULED_LABEL = "kubeagents.io/scheduled"
SCHEDULED_AT_ANNOTATION = "kubeagents.io/scheduled-at"
ENDED = frozenset({"Succeeded", "Failed", "Cancelled"})


@dataclass(frozen=True)
class Schedule:
    cron: str = ""
    interval_seconds: int = 0
    time_zone: str = "UTC"
    input: Mapping[str, Any] = field(default_factory=dict)
    concurrency_policy: str = "Allow"  # Allow, Forbid or Replace

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> Schedule:
        return cls(
            cron=spec.get("cron") or "",
            interval_seconds=int(spec.get("intervalSeconds") or 0),
            time_zone=spec.get("timeZone") or "UTC",
            input=spec.get("input") or {},
            concurrency_policy=spec.get("concurrencyPolicy") or "Allow",
        )

    def problems(self) -> list[str]:
        """What the CRD's schema cannot check, naming the field."""
        found = []
        try:
            zone = zoneinfo.ZoneInfo(self.time_zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            found.append(f"schedule.timeZone: unknown time zone {self.time_zone!r}")
            zone = zoneinfo.ZoneInfo("UTC")
        if self.cron:
            try:
                cronsim.CronSim(self.cron, datetime.datetime.now(zone))
            except cronsim.CronSimError as error:
                found.append(f"schedule.cron: {self.cron!r} is not a cron expression: {error}")
        return found

    def due(
        self, *, since: datetime.datetime, now: datetime.datetime, created: datetime.datetime
    ) -> datetime.datetime | None:
        """The latest scheduled time in (`since`, `now`], or None. `created` anchors
        `intervalSeconds`. Times are aware; the result is in UTC."""
        if self.interval_seconds:
            elapsed = (now - created).total_seconds()
            if elapsed < self.interval_seconds:
                return None
            steps = int(elapsed // self.interval_seconds)
            latest = created + datetime.timedelta(seconds=steps * self.interval_seconds)
        else:
            zone = zoneinfo.ZoneInfo(self.time_zone)
            start = (now + datetime.timedelta(seconds=1)).astimezone(zone).replace(microsecond=0)
            latest = next(cronsim.CronSim(self.cron, start, reverse=True))
        latest = latest.astimezone(UTC)
        return latest if since < latest <= now else None


def run_name(team: str, at: datetime.datetime) -> str:
    """The name of the run a schedule creates for time `at`: the same for the same time."""
    stamp = str(int(at.timestamp()))
    if len(team) + 1 + len(stamp) <= 253:
        return f"{team}-{stamp}"
    digest = hashlib.sha1(team.encode()).hexdigest()[:8]  # noqa: S324 - a name, not security
    return f"{team[: 253 - len(stamp) - 10]}-{digest}-{stamp}"


@dataclass(frozen=True)
class PastRun:
    name: str
    phase: str
    created: str  # metadata.creationTimestamp (RFC 3339 sorts as text)


def to_prune(runs: Sequence[PastRun], *, succeeded: int, failed: int) -> list[str]:
    """The ended runs beyond the history limits (`Cancelled` counts as failed), oldest first."""
    ordered = sorted(runs, key=lambda run: (run.created, run.name))
    wins = [run.name for run in ordered if run.phase == "Succeeded"]
    losses = [run.name for run in ordered if run.phase in ("Failed", "Cancelled")]
    return wins[: max(0, len(wins) - succeeded)] + losses[: max(0, len(losses) - failed)]


def active(runs: Sequence[PastRun]) -> list[str]:
    return [run.name for run in runs if run.phase not in ENDED]


def parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def format_time(at: datetime.datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
