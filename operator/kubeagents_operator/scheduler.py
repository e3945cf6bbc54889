"""A team's schedule against the API server: create the due run, honour concurrencyPolicy,
prune the history. The decisions are `schedules`' pure functions; this is the one tick a kopf
timer runs every second for each team that has a schedule.

A run a schedule creates carries the label `kubeagents.io/scheduled: "true"`, the annotation
`kubeagents.io/scheduled-at` (RFC 3339) and an owner reference to its team (deleting the team
deletes its scheduled runs, like a CronJob's Jobs). Its name is `<team>-<unix seconds>`, so a
tick repeated after a restart finds it exists and creates nothing.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from kubeagents_operator.kube import GROUP, VERSION, KubeClient
from kubeagents_operator.runs import TeamSpec
from kubeagents_operator.schedules import (
    SCHEDULED_AT_ANNOTATION,
    SCHEDULED_LABEL,
    PastRun,
    Schedule,
    active,
    format_time,
    parse_time,
    run_name,
    to_prune,
)

LOG = logging.getLogger("kubeagents.operator.scheduler")
RUNS = "agentruns"
TEAMS = "agentteams"


@dataclass(frozen=True)
class TeamRef:
    name: str
    namespace: str
    uid: str
    created: datetime.datetime


async def tick(
    kube: KubeClient,
    team_ref: TeamRef,
    team: TeamSpec,
    status: Mapping[str, Any],
    *,
    fired: MutableMapping[str, datetime.datetime],
    now: datetime.datetime | None = None,
) -> str | None:
    """Create the run that is due now, if any; its name (None: nothing was due)."""
    schedule = team.schedule
    if schedule is None:
        return None
    now = now or datetime.datetime.now(datetime.UTC)
    last = status.get("lastScheduleTime")
    since = parse_time(last) if last else team_ref.created
    since = max(since, fired.get(team_ref.uid, since))  # our own status patch not seen yet
    at = schedule.due(since=since, now=now, created=team_ref.created)
    if at is None:
        return None
    name = run_name(team_ref.name, at)
    runs = await _scheduled_runs(kube, team_ref)
    running = [run for run in active(runs) if run != name]
    when = format_time(at)
    if schedule.concurrency_policy == "Forbid" and running:
        await _event(
            kube, team_ref, "ScheduleSkipped",
            f"skipped the run of {when}: {', '.join(running)} still running "
            "(concurrencyPolicy Forbid)",
        )  # fmt: skip
    else:
        if schedule.concurrency_policy == "Replace":
            for other in running:
                await kube.patch(RUNS, team_ref.namespace, other, {"spec": {"cancel": True}})
                await _event(kube, team_ref, "ScheduleReplaced", f"cancelled {other} for {name}")
        if await kube.create(RUNS, team_ref.namespace, _run_body(team_ref, name, when, schedule)):
            await _event(kube, team_ref, "ScheduledRun", f"created run {name} for {when}")
    fired[team_ref.uid] = at
    await kube.patch_status(TEAMS, team_ref.namespace, team_ref.name, {"lastScheduleTime": when})
    for old in to_prune(runs, succeeded=team.keep_succeeded, failed=team.keep_failed):
        await kube.delete(RUNS, team_ref.namespace, old)
        LOG.info(
            "pruned run %s/%s (runsHistoryLimit of %s)", team_ref.namespace, old, team_ref.name
        )
    return name


async def _scheduled_runs(kube: KubeClient, team_ref: TeamRef) -> list[PastRun]:
    items = await kube.list_objects(RUNS, team_ref.namespace, f"{SCHEDULED_LABEL}=true")
    return [
        PastRun(
            name=item["metadata"]["name"],
            phase=(item.get("status") or {}).get("phase") or "Pending",
            created=item["metadata"].get("creationTimestamp") or "",
        )
        for item in items
        if item["spec"].get("team") == team_ref.name
    ]


def _run_body(team_ref: TeamRef, name: str, when: str, schedule: Schedule) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AgentRun",
        "metadata": {
            "name": name,
            "labels": {SCHEDULED_LABEL: "true"},
            "annotations": {SCHEDULED_AT_ANNOTATION: when},
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "AgentTeam",
                    "name": team_ref.name,
                    "uid": team_ref.uid,
                    "controller": True,
                }
            ],
        },
        "spec": {"team": team_ref.name, "input": dict(schedule.input)},
    }


async def _event(kube: KubeClient, team_ref: TeamRef, reason: str, message: str) -> None:
    await kube.event(
        kind="AgentTeam", namespace=team_ref.namespace, name=team_ref.name, uid=team_ref.uid,
        reason=reason, message=message,
    )  # fmt: skip
