"""The kopf handlers: thin, around `runs` (decisions) and `driver` (Redis).

- AgentTeam created, changed or found at start: `runs.team_problems` -> `status.steps` and the
  condition `Valid` (reason `Invalid`, the problems as the message).
- AgentRun created: the team's spec is snapshotted into `status.team` (later edits of the team
  never change a started run), the input checked; then `Running`, or `Failed` at once with
  `TeamNotFound`, `InvalidTeam` or `InvalidInput`.
- AgentRun `Running`: a daemon drives it (`drive_run`) until it ends: collect results, dispatch
  what is ready, write the status, wait for the next completion. After an operator restart the
  daemon starts again from the status and Redis: finished tasks are collected, nothing is
  dispatched twice (deterministic task ids).
- `spec.cancel: true`, a delete, or the run's `timeoutSeconds`: the cancel mark on every agent
  of the team; tasks not started never run, running ones make no further model call.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import kopf

from kubeagents.redis_link import RedisLink
from kubeagents_operator import scheduler
from kubeagents_operator.agent_health import agent_health
from kubeagents_operator.driver import DoneCursor, RunDriver, skipped
from kubeagents_operator.kube import GROUP, VERSION, KubeClient
from kubeagents_operator.metrics import OperatorMetrics
from kubeagents_operator.runs import (
    StepState,
    TeamSpec,
    input_problem,
    parse_ms,
    progress_text,
    reusable_steps,
    team_problems,
    timed_out,
    total_usage,
)
from kubeagents_operator.scheduler import TeamRef
from kubeagents_operator.schedules import parse_time
from kubeagents_operator.settings import OperatorSettings
from kubeagents_operator.tracing import RUN_SPAN, RunTracer, step_span_name

TEAMS = "agentteams"
RUNS = "agentruns"
SCHEDULE_TICK_SECONDS = 1.0
AGENTS_CHECK_SECONDS = 15.0


@dataclass
class OperatorDeps:
    settings: OperatorSettings
    kube: KubeClient
    link: RedisLink  # commands
    new_link: Callable[[], RedisLink]  # a link of its own (for a run's blocking waits)
    metrics: OperatorMetrics
    tracer: RunTracer


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, str]:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now(),
    }


def run_id(name: str, uid: str) -> str:
    """The run's id in Redis (task messages, its budget): its name, made unique by its uid."""
    return f"{name[:100]}.{uid[:8]}"


def plain(value: Any) -> Any:
    """A kopf body view (or part of one) as plain JSON data."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def register(registry: kopf.OperatorRegistry, deps: OperatorDeps) -> None:
    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        """In a pod its service account; elsewhere the kubeconfig (KUBECONFIG)."""
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.index(GROUP, VERSION, TEAMS, registry=registry, id="teams")
    def teams(namespace: str | None, name: str, spec: kopf.Spec, **_: Any) -> dict[Any, Any]:
        return {(namespace, name): plain(spec)}

    @kopf.on.resume(GROUP, VERSION, TEAMS, registry=registry)
    @kopf.on.create(GROUP, VERSION, TEAMS, registry=registry)
    @kopf.on.update(GROUP, VERSION, TEAMS, registry=registry, field="spec")
    def team_changed(spec: kopf.Spec, patch: kopf.Patch, **_: Any) -> None:
        team = TeamSpec.parse(plain(spec))
        problems = team_problems(team)
        patch.status["steps"] = len(team.steps)
        patch.status["schedule"] = _schedule_text(team)
        patch.status["conditions"] = [
            condition(
                "Valid", not problems, "Invalid" if problems else "Valid", "; ".join(problems)
            )
        ]

    @kopf.timer(GROUP, VERSION, TEAMS, registry=registry, interval=AGENTS_CHECK_SECONDS)
    async def team_agents(
        spec: kopf.Spec, status: kopf.Status, namespace: str | None, name: str, **_: Any
    ) -> None:
        """`status.agents` (per role: the agent, ready, why not) and `status.agentsReady`
        (`ready/total`), for `kubectl describe agentteam` and `kubectl get agentteams`."""
        assert namespace is not None
        team = TeamSpec.parse(plain(spec))
        roles = {}
        for role, agent in sorted(team.roles.items()):
            health = await agent_health(deps.kube, deps.link, namespace, agent)
            roles[role] = health.as_status()
        ready = sum(1 for entry in roles.values() if entry["ready"])
        await deps.kube.patch_status(
            TEAMS, namespace, name, {"agents": roles, "agentsReady": f"{ready}/{len(roles)}"}
        )

    fired: dict[str, datetime.datetime] = {}

    @kopf.timer(
        GROUP,
        VERSION,
        TEAMS,
        registry=registry,
        interval=SCHEDULE_TICK_SECONDS,
        when=lambda spec, **_: bool(spec.get("schedule")),
    )
    async def team_schedule(
        spec: kopf.Spec,
        status: kopf.Status,
        namespace: str | None,
        name: str,
        uid: str,
        meta: kopf.Meta,
        **_: Any,
    ) -> None:
        assert namespace is not None
        team = TeamSpec.parse(plain(spec))
        if team_problems(team):
            return  # the Valid condition says why
        created = parse_time(str(meta["creationTimestamp"]))
        team_ref = TeamRef(name=name, namespace=namespace, uid=uid, created=created)
        await scheduler.tick(deps.kube, team_ref, team, plain(status), fired=fired)

    @kopf.on.create(GROUP, VERSION, RUNS, registry=registry)
    async def run_created(
        name: str,
        spec: kopf.Spec,
        status: kopf.Status,
        namespace: str | None,
        patch: kopf.Patch,
        **kwargs: Any,
    ) -> None:
        if status.get("phase"):
            return
        try:
            teams: kopf.Index[Any, Any] = kwargs["teams"]  # the index above
            found = list(teams.get((namespace, spec["team"]), []))
            if not found:
                _fail(
                    patch, "TeamNotFound", f"spec.team: no AgentTeam {spec['team']} in {namespace}"
                )
                return
            team_spec = found[0]
            team = TeamSpec.parse(team_spec)
            problems = team_problems(team)
            if problems:
                _fail(patch, "InvalidTeam", "; ".join(problems))
                return
            run_input = plain(spec.get("input") or {})
            reused: dict[str, StepState] = {}
            if spec.get("resumeFrom"):
                assert namespace is not None  # the CRDs are namespaced
                resumed = await _resumed(deps.kube, namespace, plain(spec), team)
                if isinstance(resumed, str):
                    _fail(patch, "InvalidResume", resumed)
                    return
                reused, run_input = resumed
            problem = input_problem(team, run_input)
            if problem is not None:
                _fail(patch, "InvalidInput", problem)
                return
            steps = {
                step.name: reused[step.name].as_status()
                if step.name in reused
                else {"phase": "Pending", "agent": team.roles[step.role]}
                for step in team.steps
            }
            for step, entry in steps.items():
                entry["agent"] = team.agent_of(step)
            patch.status.update(
                {
                    "phase": "Running",
                    "startTime": now(),
                    "team": team_spec,
                    "input": run_input,
                    "progress": progress_text(team, reused),
                    "steps": steps,
                    "conditions": [condition("Succeeded", False, "Running", "")],
                }
            )
        finally:
            if patch.status.get("phase") and namespace:
                await last_run(
                    deps, namespace, spec["team"], name, patch.status["phase"], started=True
                )

    @kopf.daemon(
        GROUP,
        VERSION,
        RUNS,
        registry=registry,
        when=lambda status, **_: status.get("phase") == "Running",
        cancellation_timeout=10,
    )
    async def run_daemon(
        name: str,
        namespace: str | None,
        uid: str,
        spec: kopf.Spec,
        status: kopf.Status,
        stopped: kopf.DaemonStopped,
        **_: Any,
    ) -> None:
        assert namespace is not None  # the CRDs are namespaced
        await drive_run(
            deps, name=name, namespace=namespace, uid=uid, spec=spec, status=status, stopped=stopped
        )

    @kopf.on.delete(GROUP, VERSION, RUNS, registry=registry, optional=True)
    async def run_deleted(
        namespace: str | None, name: str, uid: str, status: kopf.Status, **_: Any
    ) -> None:
        if namespace and status.get("team") and status.get("phase") == "Running":
            driver = RunDriver(lambda _: deps.link, namespace=namespace)
            await driver.cancel(TeamSpec.parse(plain(status["team"])), run_id(name, uid))


async def _resumed(
    kube: KubeClient, namespace: str, spec: Mapping[str, Any], team: TeamSpec
) -> tuple[dict[str, StepState], dict[str, Any]] | str:
    """What a run with `spec.resumeFrom` takes over from the earlier run: its reusable steps
    and its input; or why it cannot (a message naming the field)."""
    earlier_name = spec["resumeFrom"]
    earlier = await kube.get(RUNS, namespace, earlier_name)
    if earlier is None:
        return f"spec.resumeFrom: no AgentRun {earlier_name} in {namespace}"
    status = earlier.get("status") or {}
    if earlier["spec"]["team"] != spec["team"]:
        return (
            f"spec.resumeFrom: run {earlier_name} is a run of team {earlier['spec']['team']}, "
            f"not of {spec['team']}"
        )
    if status.get("phase") not in ("Succeeded", "Failed", "Cancelled") or not status.get("team"):
        return f"spec.resumeFrom: run {earlier_name} has not ended (phase {status.get('phase')})"
    earlier_input = status.get("input", earlier["spec"].get("input") or {})
    run_input = spec.get("input")
    if run_input is not None and run_input != earlier_input:
        return (
            f"spec.input differs from the input of run {earlier_name}: its outputs cannot be "
            "reused (omit spec.input to take that run's)"
        )
    states = {
        step: StepState.from_status(state) for step, state in (status.get("steps") or {}).items()
    }
    reused = reusable_steps(team, TeamSpec.parse(status["team"]), states, earlier_name)
    return reused, dict(earlier_input)


def _schedule_text(team: TeamSpec) -> str:
    """The team's SCHEDULE column."""
    if team.schedule is None:
        return ""
    if team.schedule.interval_seconds:
        return f"@every {team.schedule.interval_seconds}s"
    return team.schedule.cron


async def last_run(
    deps: OperatorDeps, namespace: str, team: str, run: str, phase: str, *, started: bool
) -> None:
    """The team's LAST RUN column: the newest run that started, with its phase; a run that
    ends updates it only while it is still the newest."""
    if not started:
        found = await deps.kube.get(TEAMS, namespace, team)
        if found is None or (found.get("status") or {}).get("lastRun", {}).get("name") != run:
            return
    await deps.kube.patch_status(TEAMS, namespace, team, {"lastRun": {"name": run, "phase": phase}})


def _fail(patch: kopf.Patch, reason: str, message: str) -> None:
    patch.status.update(
        {
            "phase": "Failed",
            "completionTime": now(),
            "message": message,
            "conditions": [
                condition("Succeeded", False, reason, message),
                condition("Failed", True, reason, message),
            ],
        }
    )


@dataclass
class _Run:
    """One run being driven: what writing its status needs."""

    deps: OperatorDeps
    team: TeamSpec
    team_name: str
    name: str
    namespace: str
    uid: str
    rid: str
    driver: RunDriver
    started: float  # unix seconds: the run's status.startTime (survives operator restarts)
    written: dict[str, Any] = field(default_factory=dict)  # the last status patched
    writing: asyncio.Future[None] | None = None  # the writes `publish` started

    def publish(
        self, moves: Sequence[tuple[str, StepState]], states: Mapping[str, StepState]
    ) -> None:
        """Announce the step transitions and write the status in the background, after the
        writes published before (in order); a failed write surfaces at the next publish or
        `flush`."""
        previous = self.writing
        if previous is not None and previous.done():
            previous.result()  # raises what the last write raised
            previous = None

        async def writes() -> None:
            if previous is not None:
                await previous
            await self.announce(moves)
            await self.write(states)

        self.writing = asyncio.ensure_future(writes())

    async def flush(self) -> None:
        """Wait for the writes `publish` started."""
        if self.writing is not None:
            writing, self.writing = self.writing, None
            await writing

    async def write(self, states: Mapping[str, StepState], **final: Any) -> None:
        """Patch the run's status; a status identical to the last one written is not sent
        again (a run that only waits costs the API server nothing)."""
        cost = await self.driver.cost_usd(self.team, self.rid)
        step_costs = {
            step: await self.driver.cost_usd(self.team, self.rid, step)
            for step, state in states.items()
            if state.attempts and not state.reused_from
        }
        status = {
            "steps": _steps_status(self.deps, self.team, states, step_costs),
            "progress": progress_text(self.team, states),
            "usage": _usage(states, cost),
            **final,
        }
        if status == self.written:
            return
        await self.deps.kube.patch_status(RUNS, self.namespace, self.name, status)
        self.written = status

    async def finish(
        self,
        states: Mapping[str, StepState],
        phase: str,
        reason: str,
        message: str,
        output: str = "",
    ) -> None:
        await self.flush()  # the last published writes land before the final status
        if phase != "Succeeded":
            await self.driver.cancel(self.team, self.rid)  # running tasks stop, queued never run
            states = skipped(states, self.team)
        final: dict[str, Any] = {
            "phase": phase,
            "completionTime": now(),
            "message": message,
            "conditions": [
                condition("Succeeded", phase == "Succeeded", reason, message),
                *([] if phase == "Succeeded" else [condition(phase, True, reason, message)]),
            ],
        }
        if output:
            final["output"] = output
        await last_run(self.deps, self.namespace, self.team_name, self.name, phase, started=False)
        self.deps.tracer.write_span(
            self.uid,
            name=f"invoke_workflow {self.team_name}",
            span=RUN_SPAN,
            parent=None,
            start_ns=round(self.started * 1e9),
            end_ns=time.time_ns(),
            attributes={
                "gen_ai.operation.name": "invoke_workflow", "kubeagents.team": self.team_name,
                "kubeagents.run": self.name, "kubeagents.run.phase": phase,
            },
            error=message if phase != "Succeeded" else "",
        )  # fmt: skip
        # Counted before the final status is written, so that whoever sees the status (kubectl
        # wait) finds the metrics already there.
        metrics = self.deps.metrics
        metrics.runs.labels(self.team_name, phase).inc()
        metrics.run_duration.labels(self.team_name).observe(time.time() - self.started)
        metrics.run_cost.labels(self.team_name).inc(await self.driver.cost_usd(self.team, self.rid))
        await self.write(states, **final)

    def trace_steps(self, before: Mapping[str, StepState], after: Mapping[str, StepState]) -> None:
        """A span for each step attempt that ended (`tracing`)."""
        for step, state in after.items():
            previous = before.get(step)
            if previous is None or previous.phase != "Running" or state.phase == "Running":
                continue
            start = parse_ms(state.started_at) if state.started_at else None
            end = parse_ms(state.finished_at) if state.finished_at else time.time_ns() // 10**6
            self.deps.tracer.write_span(
                self.uid,
                name=f"step {step}",
                span=step_span_name(step, state.attempts),
                parent=RUN_SPAN,
                start_ns=(start or end) * 10**6,
                end_ns=end * 10**6,
                attributes={
                    "kubeagents.run": self.name, "kubeagents.step": step,
                    "kubeagents.step.attempt": state.attempts,
                    "kubeagents.task.id": state.task_id,
                    "gen_ai.agent.name": self.team.agent_of(step),
                },
                error=state.message if state.phase == "Failed" else "",
            )  # fmt: skip

    async def announce(self, moves: Sequence[tuple[str, StepState]]) -> None:
        """An Event (and a metric) per step transition (`transitions`)."""
        for step, state in moves:
            self.deps.metrics.steps.labels(state.phase).inc()
            message = f"step {step}: {state.phase}" + (
                f": {state.message}" if state.message else ""
            )
            await self.deps.kube.event(
                kind="AgentRun", namespace=self.namespace, name=self.name, uid=self.uid,
                reason=f"Step{state.phase}", message=message, warning=state.phase == "Failed",
            )  # fmt: skip


def transitions(
    before: Mapping[str, str], states: Mapping[str, StepState]
) -> list[tuple[str, StepState]]:
    """The steps whose phase changed since `before` (step -> phase), with their new state."""
    return [(step, state) for step, state in states.items() if before.get(step) != state.phase]


async def drive_run(
    deps: OperatorDeps,
    *,
    name: str,
    namespace: str,
    uid: str,
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    stopped: kopf.DaemonStopped,
) -> None:
    """Drive one run until it ends (or the operator stops: then a restart resumes it)."""
    team = TeamSpec.parse(plain(status["team"]))
    run_input = plain(status.get("input", spec.get("input") or {}))
    states = {
        step: StepState.from_status(plain(state))
        for step, state in (status.get("steps") or {}).items()
    }
    # Blocking reads hold their connection: the run's waits get links of their own, one for
    # every agent on Redis Cluster (their streams live on different nodes), else one for all.
    agents = sorted(set(team.roles.values()))
    shared = None if deps.settings.redis_cluster else deps.new_link()
    wait_links = {agent: shared or deps.new_link() for agent in agents}
    driver = RunDriver(
        lambda _: deps.link, namespace=namespace, wait_link_for=wait_links.__getitem__
    )
    started = parse_ms(str(status.get("startTime") or now())) / 1000
    run = _Run(
        deps, team, str(spec["team"]), name, namespace, uid, run_id(name, uid), driver, started,
    )  # fmt: skip
    cursor = DoneCursor()
    woke = time.monotonic()
    try:
        cursor = await driver.start_cursor(team)
        states = await _restore_outputs(driver, team, states)
        while not stopped:
            if spec.get("cancel"):
                await run.finish(states, "Cancelled", "Cancelled", "cancelled by spec.cancel")
                return
            if team.timeout_seconds and time.time() - run.started > team.timeout_seconds:
                message = f"the run took longer than its timeoutSeconds ({team.timeout_seconds})"
                await run.finish(states, "Failed", "Timeout", message)
                return
            before = {step: state.phase for step, state in states.items()}
            collected = timed_out(team, await driver.collect(team, states), time.time_ns() // 10**6)
            run.trace_steps(states, collected)
            states = collected
            if spec.get("cancel"):
                continue  # seen while collecting: cancel before dispatching anything more
            finished = any(
                states[step].phase != phase for step, phase in before.items() if step in states
            )
            collected_phases = {step: state.phase for step, state in states.items()}
            states, progress = await driver.dispatch(
                team, run=run.rid, run_uid=uid, run_input=run_input, states=states
            )
            # What collecting changed (a step Retrying, say), then what dispatching changed.
            moves = transitions(before, collected) + transitions(collected_phases, states)
            if finished and progress.dispatch:
                deps.metrics.dispatch_latency.observe(time.monotonic() - woke)
            if progress.phase != "Running":
                await run.flush()  # the Events stay in order
                await run.announce(moves)
                phase = progress.phase
                await run.finish(states, phase, phase, progress.message, progress.output)
                return
            # Events and the status are written while the run already waits: a completion
            # that arrives meanwhile is dispatched without waiting for the API server.
            run.publish(moves, states)
            await driver.wait(team, run.rid, cursor, within=deps.settings.wait_seconds)
            woke = time.monotonic()
    finally:
        try:
            await run.flush()
        finally:
            await cursor.close()
        for link in {id(link): link for link in wait_links.values()}.values():
            await link.aclose()


async def _restore_outputs(
    driver: RunDriver, team: TeamSpec, states: dict[str, StepState]
) -> dict[str, StepState]:
    """After a restart, the full outputs of succeeded steps (the status holds them cut)."""
    restored = dict(states)
    for step, state in states.items():
        if state.phase == "Succeeded" and state.task_id:
            result = await driver.queue(team.agent_of(step)).result(state.task_id)
            if result is not None:
                restored[step] = replace(state, output=str(result.get("output") or ""))
    return restored


def _steps_status(
    deps: OperatorDeps,
    team: TeamSpec,
    states: Mapping[str, StepState],
    costs: Mapping[str, float],
) -> dict[str, Any]:
    limit = deps.settings.output_max_chars
    steps: dict[str, Any] = {}
    for step in team.steps:
        state = states.get(step.name, StepState())
        # A merge patch keeps what it does not name: a cleared message is removed with null.
        entry: dict[str, Any] = {"message": None, "outputTruncated": None, **state.as_status()}
        entry["agent"] = team.roles[step.role]
        if step.name in costs:
            entry["cost"] = f"${costs[step.name]:.4f}"
        if len(state.output) > limit:
            entry["output"] = state.output[:limit]
            entry["outputTruncated"] = True
        steps[step.name] = entry
    return steps


def _usage(states: Mapping[str, StepState], cost_usd: float) -> dict[str, Any]:
    usage = total_usage(states)
    tokens = sum(usage.values())
    return {"tokens": tokens, **usage, "cost": f"${cost_usd:.4f}"}
