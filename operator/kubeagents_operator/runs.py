"""A team run as pure functions: the team's spec, its checks, and how a run moves on.

The operator's handlers only read and write Kubernetes objects and Redis; every decision is
here, a function of the run's snapshot of its team, its input and its status:

- `TeamSpec.parse` reads an `AgentTeam` spec (the CRD's schema already holds); `team_problems`
  finds what the schema cannot: cycles, template references, the `inputSchema` itself.
- `input_problem` checks a run's input against the team's `inputSchema`, naming the key.
- `task_id` is deterministic (run uid, step, attempt), so a resubmission after a crash is not
  queued twice.
- `advance` takes the run's step states and decides what to dispatch, and when the run is
  done; `record_result` folds a task's final result into a step's state (retrying an output
  that does not match `outputSchema` while attempts remain, with the error in the next prompt).
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import jsonschema

from kubeagents_operator import dag, templates
from kubeagents_operator.errors import OutputInvalid
from kubeagents_operator.outputs import validated
from kubeagents_operator.schedules import Schedule

TERMINAL_STEP_PHASES = frozenset({"Succeeded", "Failed", "Skipped"})
RETRY_NOTE = (
    "\n\nYour previous answer was rejected: {error}. Answer again, with JSON that matches the "
    "required schema."
)


@dataclass(frozen=True)
class StepSpec:
    name: str
    role: str
    prompt: str
    depends_on: tuple[str, ...] = ()
    output_schema: Mapping[str, Any] | None = None
    max_attempts: int = 1
    timeout_seconds: int | None = None


@dataclass(frozen=True)
class TeamSpec:
    roles: Mapping[str, str]  # role -> agent
    steps: tuple[StepSpec, ...]
    output: str = ""
    input_schema: Mapping[str, Any] | None = None
    budget_tokens: int | None = None
    budget_usd: float | None = None
    timeout_seconds: int | None = None
    schedule: Schedule | None = None
    keep_succeeded: int = 10  # runsHistoryLimit
    keep_failed: int = 10

    @classmethod
    def parse(cls, spec: Mapping[str, Any]) -> TeamSpec:
        budget = spec.get("budget") or {}
        history = spec.get("runsHistoryLimit") or {}
        return cls(
            roles={role: entry["agent"] for role, entry in (spec.get("roles") or {}).items()},
            steps=tuple(
                StepSpec(
                    name=step["name"],
                    role=step["role"],
                    prompt=step["prompt"],
                    depends_on=tuple(step.get("dependsOn") or ()),
                    output_schema=step.get("outputSchema"),
                    max_attempts=int(step.get("maxAttempts") or 1),
                    timeout_seconds=step.get("timeoutSeconds"),
                )
                for step in spec.get("steps") or ()
            ),
            output=spec.get("output") or "",
            input_schema=spec.get("inputSchema"),
            budget_tokens=budget.get("tokens"),
            budget_usd=budget.get("usd"),
            timeout_seconds=spec.get("timeoutSeconds"),
            schedule=Schedule.parse(spec["schedule"]) if spec.get("schedule") else None,
            keep_succeeded=int(history.get("succeeded", 10)),
            keep_failed=int(history.get("failed", 10)),
        )

    @property
    def nodes(self) -> list[dag.StepNode]:
        return [dag.StepNode(step.name, step.depends_on) for step in self.steps]

    def step(self, name: str) -> StepSpec:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def agent_of(self, step: str) -> str:
        return self.roles[self.step(step).role]

    def run_budget_header(self, run: str, step: str) -> str:
        """The `kubeagents-run-budget` value of a step's task: the run and step always (the
        proxies meter the run's cost, and each step's, even without limits), and the limits."""
        parts = [f"run={run}", f"step={step}"]
        if self.budget_tokens is not None:
            parts.append(f"tokens={self.budget_tokens}")
        if self.budget_usd is not None:
            parts.append(f"usd={self.budget_usd}")
        return "; ".join(parts)


def team_problems(team: TeamSpec) -> list[str]:
    """What the CRD's schema cannot check: the DAG, the templates, the input schema. Each
    problem names its field."""
    found = dag.problems(team.nodes)
    if found:
        return found  # ancestry is meaningless without a DAG
    if team.schedule is not None:
        found += team.schedule.problems()
    if team.input_schema is not None:
        try:
            jsonschema.Draft202012Validator.check_schema(team.input_schema)
        except jsonschema.SchemaError as error:
            found.append(f"inputSchema: not a valid JSON Schema: {error.message}")
    for index, step in enumerate(team.steps):
        if step.output_schema is not None:
            try:
                jsonschema.Draft202012Validator.check_schema(step.output_schema)
            except jsonschema.SchemaError as error:
                found.append(
                    f"steps[{index}].outputSchema: not a valid JSON Schema: {error.message}"
                )
    keys = _declared_input_keys(team.input_schema)
    ancestry = dag.ancestors(team.nodes)
    for index, step in enumerate(team.steps):
        found += templates.problems(
            step.prompt,
            field=f"steps[{index}].prompt",
            allowed_steps=ancestry[step.name],
            input_keys=keys,
        )
    if team.output:
        found += templates.problems(
            team.output,
            field="output",
            allowed_steps=frozenset(step.name for step in team.steps),
            input_keys=keys,
        )
    if team.schedule is not None and not found:
        problem = input_problem(team, team.schedule.input)
        if problem is not None:
            found.append(problem.replace("spec.input:", "schedule.input:", 1))
    return found


def _declared_input_keys(schema: Mapping[str, Any] | None) -> frozenset[str] | None:
    if not schema or not isinstance(schema.get("properties"), Mapping):
        return None
    if schema.get("additionalProperties", True) is not False and not schema.get("required"):
        return None  # open schema: undeclared keys may exist
    return frozenset(schema["properties"])


def input_problem(team: TeamSpec, run_input: Mapping[str, Any]) -> str | None:
    """Why the run's input does not match the team's `inputSchema`, naming the key; None: it
    does."""
    if team.input_schema is None:
        return None
    validator = jsonschema.Draft202012Validator(team.input_schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(dict(run_input)))
    if error is None:
        return None
    where = ".".join(str(part) for part in error.absolute_path) or "(root)"
    return f"spec.input: at {where}: {error.message}"


def task_id(run_uid: str, step: str, attempt: int) -> str:
    """The task id of a step's attempt: deterministic, within the queue's 64 characters."""
    uid = run_uid.replace("-", "")[:32]
    name = step if len(step) <= 24 else f"{step[:15]}{hashlib.sha1(step.encode()).hexdigest()[:8]}"  # noqa: S324 - a name, not security
    return f"{uid}.{name}.{attempt}"


@dataclass(frozen=True)
class StepState:
    """What the run's status says of one step."""

    phase: str = "Pending"  # Pending, Running, Retrying, Succeeded, Failed, Skipped
    attempts: int = 0
    task_id: str = ""
    output: str = ""
    data: Any = None
    usage: Mapping[str, int] = field(default_factory=dict)
    message: str = ""
    reused_from: str = ""  # the run whose result this step reuses (`spec.resumeFrom`)
    started_at: str = ""  # RFC 3339 with milliseconds: the current attempt's dispatch
    finished_at: str = ""  # and its task's end

    def as_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"phase": self.phase, "attempts": self.attempts}
        if self.task_id:
            status["taskId"] = self.task_id
        if self.output:
            status["output"] = self.output
        if self.data is not None:
            status["data"] = self.data
        if self.usage:
            status["usage"] = dict(self.usage)
        if self.message:
            status["message"] = self.message
        if self.reused_from:
            status["reusedFrom"] = self.reused_from
        if self.started_at:
            status["startTime"] = self.started_at
        if self.finished_at:
            status["completionTime"] = self.finished_at
        return status

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> StepState:
        return cls(
            phase=status.get("phase", "Pending"),
            attempts=int(status.get("attempts", 0)),
            task_id=status.get("taskId", ""),
            output=status.get("output", ""),
            data=status.get("data"),
            usage=dict(status.get("usage") or {}),
            message=status.get("message", ""),
            reused_from=status.get("reusedFrom", ""),
            started_at=status.get("startTime", ""),
            finished_at=status.get("completionTime", ""),
        )


@dataclass(frozen=True)
class Dispatch:
    """A task to submit: a step's next attempt, on its role's agent, with its rendered prompt."""

    step: str
    agent: str
    attempt: int
    task_id: str
    prompt: str


@dataclass(frozen=True)
class Progress:
    """What to do next with a run."""

    dispatch: tuple[Dispatch, ...]
    phase: str  # Running, Succeeded or Failed
    output: str = ""
    message: str = ""


def record_result(
    team: TeamSpec, states: Mapping[str, StepState], step: str, result: Mapping[str, Any]
) -> StepState:
    """The step's state after its task's final `result` (a decoded task result)."""
    spec = team.step(step)
    state = states.get(step, StepState())
    if isinstance(result.get("finished_at"), int):
        state = replace(state, finished_at=format_ms(result["finished_at"]))
    usage = _add_usage(state.usage, result.get("usage") or {})
    status = result.get("status")
    if status != "succeeded":
        error = result.get("error") or status or "failed"
        return replace(state, phase="Failed", usage=usage, message=str(error))
    text = str(result.get("output") or "")
    try:
        output = validated(text, spec.output_schema)
    except OutputInvalid as invalid:
        if state.attempts < spec.max_attempts:
            return replace(state, phase="Retrying", usage=usage, output=text, message=str(invalid))
        return replace(
            state, phase="Failed", usage=usage, output=text, message=f"OutputInvalid: {invalid}"
        )
    return replace(state, phase="Succeeded", usage=usage, output=text, data=output.data, message="")


def _add_usage(total: Mapping[str, int], usage: Mapping[str, Any]) -> dict[str, int]:
    summed = dict(total)
    for name, value in usage.items():
        if isinstance(value, int):
            summed[name] = summed.get(name, 0) + value
    return summed


def advance(
    team: TeamSpec, run_uid: str, run_input: Mapping[str, Any], states: Mapping[str, StepState]
) -> Progress:
    """The run's next moves: the steps to dispatch now (ready ones, and retries), or its end."""
    failed = [name for name, state in states.items() if state.phase == "Failed"]
    if failed:
        first = failed[0]
        return Progress((), "Failed", message=f"step {first} failed: {states[first].message}")
    if all(states.get(step.name, StepState()).phase == "Succeeded" for step in team.steps):
        outputs, data = _results(states)
        output = templates.render(team.output, run_input=run_input, outputs=outputs, data=data)
        return Progress((), "Succeeded", output=output)
    phases = {name: state.phase for name, state in states.items()}
    outputs, data = _results(states)
    moves: list[Dispatch] = []
    for name in dag.ready(team.nodes, phases):
        moves.append(_dispatch(team, run_uid, run_input, name, 1, outputs, data, retry_error=""))
    for name, state in states.items():
        if state.phase == "Retrying":
            attempt = state.attempts + 1
            moves.append(
                _dispatch(team, run_uid, run_input, name, attempt, outputs, data, state.message)
            )
    return Progress(tuple(moves), "Running")


def dispatched(state: StepState, move: Dispatch, at_ms: int) -> StepState:
    """The step's state once `move`'s task is submitted (at unix milliseconds `at_ms`)."""
    return replace(
        state,
        phase="Running",
        attempts=move.attempt,
        task_id=move.task_id,
        started_at=format_ms(at_ms),
        finished_at="",
    )


def timed_out(team: TeamSpec, states: Mapping[str, StepState], now_ms: int) -> dict[str, StepState]:
    """The step states with every running step past its `timeoutSeconds` (counted from its
    attempt's dispatch) failed, reason `Timeout`. Not retried: the task may still be running,
    and only the run's cancel mark (set when the run fails) stops it."""
    updated = dict(states)
    for step in team.steps:
        state = states.get(step.name)
        if (
            state is None
            or state.phase != "Running"
            or not step.timeout_seconds
            or not state.started_at
            or now_ms - parse_ms(state.started_at) <= step.timeout_seconds * 1000
        ):
            continue
        updated[step.name] = replace(
            state,
            phase="Failed",
            message="Timeout: the step took longer than its timeoutSeconds "
            f"({step.timeout_seconds})",
        )
    return updated


def format_ms(unix_ms: int) -> str:
    """Unix milliseconds as RFC 3339 (UTC, milliseconds)."""
    at = datetime.datetime.fromtimestamp(unix_ms / 1000, datetime.UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


def parse_ms(text: str) -> int:
    """RFC 3339 (as `format_ms` writes it, or whole seconds) as unix milliseconds."""
    at = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return round(at.timestamp() * 1000)


def _results(states: Mapping[str, StepState]) -> tuple[dict[str, str], dict[str, Any]]:
    done = {name: state for name, state in states.items() if state.phase == "Succeeded"}
    outputs = {name: state.output for name, state in done.items()}
    data = {name: state.data for name, state in done.items() if state.data is not None}
    return outputs, data


def _dispatch(
    team: TeamSpec,
    run_uid: str,
    run_input: Mapping[str, Any],
    name: str,
    attempt: int,
    outputs: Mapping[str, str],
    data: Mapping[str, Any],
    retry_error: str,
) -> Dispatch:
    spec = team.step(name)
    prompt = templates.render(spec.prompt, run_input=run_input, outputs=outputs, data=data)
    if retry_error:
        prompt += RETRY_NOTE.format(error=retry_error)
    return Dispatch(
        step=name,
        agent=team.roles[spec.role],
        attempt=attempt,
        task_id=task_id(run_uid, name, attempt),
        prompt=prompt,
    )


def reusable_steps(
    team: TeamSpec, earlier: TeamSpec, earlier_states: Mapping[str, StepState], earlier_run: str
) -> dict[str, StepState]:
    """The steps a run resumed from `earlier_run` (`spec.resumeFrom`) takes over instead of
    running them: those that succeeded there, are defined the same way in both snapshots of the
    team (same prompt, role, agent, dependencies, schema) and whose dependencies are all taken
    over too, so that their prompts would render the same. They cost this run nothing: their
    usage stays with the earlier run."""
    reused: dict[str, StepState] = {}
    ancestry = dag.ancestors(team.nodes)
    # Fewer ancestors first is a topological order: a step has more than any of its dependencies.
    for name in sorted(ancestry, key=lambda step: len(ancestry[step])):
        spec = team.step(name)
        state = earlier_states.get(name)
        try:
            same = earlier.step(name) == spec and earlier.agent_of(name) == team.agent_of(name)
        except KeyError:
            same = False
        if (
            same
            and state is not None
            and state.phase == "Succeeded"
            and state.task_id
            and all(dependency in reused for dependency in spec.depends_on)
        ):
            reused[name] = replace(
                state,
                usage={},
                message=f"reused from run {earlier_run}",
                reused_from=state.reused_from or earlier_run,
            )
    return reused


def progress_text(team: TeamSpec, states: Mapping[str, StepState]) -> str:
    """`done/total` for `kubectl get agentruns`."""
    done = sum(1 for step in team.steps if states.get(step.name, StepState()).phase == "Succeeded")
    return f"{done}/{len(team.steps)}"


def total_usage(states: Mapping[str, StepState]) -> dict[str, int]:
    total: dict[str, int] = {}
    for state in states.values():
        total = _add_usage(total, state.usage)
    return total
