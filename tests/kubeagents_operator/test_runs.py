"""How a run moves on, as pure functions: checks of a team, dispatch, results, retries, end."""

from __future__ import annotations

from typing import Any

import pytest

from kubeagents_operator.runs import (
    StepState,
    TeamSpec,
    advance,
    dispatched,
    input_problem,
    progress_text,
    record_result,
    reusable_steps,
    task_id,
    team_problems,
    timed_out,
    total_usage,
)

SECTIONS = {
    "type": "object",
    "required": ["sections"],
    "properties": {"sections": {"type": "array", "items": {"type": "string"}}},
}
DIAMOND: dict[str, Any] = {
    "roles": {"researcher": {"agent": "research"}, "writer": {"agent": "summarizer"}},
    "inputSchema": {"type": "object", "required": ["topic"], "properties": {"topic": {"type": "string"}}},  # noqa: E501
    "steps": [
        {"name": "research", "role": "researcher", "prompt": "Research {{ .input.topic }}"},
        {"name": "critique", "role": "researcher", "dependsOn": ["research"], "prompt": "Critique {{ .steps.research.output }}"},  # noqa: E501
        {"name": "outline", "role": "writer", "dependsOn": ["research"], "prompt": "Outline {{ .steps.research.output }}", "outputSchema": SECTIONS, "maxAttempts": 2},  # noqa: E501
        {"name": "summarize", "role": "writer", "dependsOn": ["critique", "outline"], "prompt": "Write {{ .steps.outline.data.sections }}, fixing {{ .steps.critique.output }}"},  # noqa: E501
    ],
    "output": "{{ .steps.summarize.output }}",
    "budget": {"tokens": 500000, "usd": 10},
}  # fmt: skip
TEAM = TeamSpec.parse(DIAMOND)
UID = "6f1c2a3b-0000-4000-8000-1234567890ab"
AT_MS = 1_795_413_600_123  # 2026-11-23T06:00:00.123Z
INPUT = {"topic": "AI in healthcare"}


def succeeded(output: str, tokens: int = 10) -> dict[str, Any]:
    return {"status": "succeeded", "output": output, "usage": {"input_tokens": tokens}}


def test_the_diamond_is_valid_and_its_budget_becomes_the_run_header() -> None:
    assert team_problems(TEAM) == []
    assert TEAM.run_budget_header("r1", "outline") == "run=r1; step=outline; tokens=500000; usd=10"
    assert (
        TeamSpec.parse({**DIAMOND, "budget": {}}).run_budget_header("r1", "s") == "run=r1; step=s"
    )


def test_a_team_with_a_bad_reference_or_schema_is_invalid_naming_the_field() -> None:
    spec = {**DIAMOND, "steps": [dict(step) for step in DIAMOND["steps"]]}
    spec["steps"][1]["prompt"] = "Critique {{ .steps.outline.output }} on {{ .input.subject }}"
    spec["steps"][2]["outputSchema"] = {"type": "thing"}
    assert team_problems(TeamSpec.parse(spec)) == [
        "steps[2].outputSchema: not a valid JSON Schema: 'thing' is not valid under any of the "
        "given schemas",
        "steps[1].prompt: {{ .steps.outline.output }} refers to step outline, not an ancestor",
        "steps[1].prompt: {{ .input.subject }}: the input has no key subject",
    ]


def test_a_cycle_makes_the_team_invalid() -> None:
    spec = {**DIAMOND, "steps": [dict(step) for step in DIAMOND["steps"]]}
    spec["steps"][0]["dependsOn"] = ["summarize"]
    assert team_problems(TeamSpec.parse(spec)) == [
        "steps: dependency cycle research -> summarize -> critique -> research"
    ]


def test_an_input_that_does_not_match_the_schema_is_named() -> None:
    assert input_problem(TEAM, INPUT) is None
    assert input_problem(TEAM, {}) == "spec.input: at (root): 'topic' is a required property"
    assert input_problem(TEAM, {"topic": 7}) == "spec.input: at topic: 7 is not of type 'string'"


def test_task_ids_are_deterministic_and_fit_the_queue() -> None:
    assert task_id(UID, "research", 1) == "6f1c2a3b000040008000123456789" + "0ab.research.1"
    long = task_id(UID, "a-very-long-step-name-that-goes-on-and-on", 2)
    assert long == task_id(UID, "a-very-long-step-name-that-goes-on-and-on", 2)
    assert len(long) <= 64


def test_the_diamond_runs_in_order_with_parallel_middle_steps() -> None:
    states: dict[str, StepState] = {}
    first = advance(TEAM, UID, INPUT, states)
    assert [(d.step, d.agent, d.prompt) for d in first.dispatch] == [
        ("research", "research", "Research AI in healthcare")
    ]
    states["research"] = dispatched(StepState(), first.dispatch[0], AT_MS)
    assert advance(TEAM, UID, INPUT, states).dispatch == ()
    states["research"] = record_result(TEAM, states, "research", succeeded("facts"))
    middle = advance(TEAM, UID, INPUT, states)
    assert [d.step for d in middle.dispatch] == ["critique", "outline"]
    for move in middle.dispatch:
        states[move.step] = dispatched(StepState(), move, AT_MS)
    states["critique"] = record_result(TEAM, states, "critique", succeeded("too long"))
    states["outline"] = record_result(
        TEAM, states, "outline", succeeded('```json\n{"sections": ["a", "b"]}\n```')
    )
    assert states["outline"].data == {"sections": ["a", "b"]}
    last = advance(TEAM, UID, INPUT, states)
    assert [d.prompt for d in last.dispatch] == ['Write ["a","b"], fixing too long']
    states["summarize"] = dispatched(StepState(), last.dispatch[0], AT_MS)
    states["summarize"] = record_result(TEAM, states, "summarize", succeeded("the report"))
    end = advance(TEAM, UID, INPUT, states)
    assert (end.phase, end.output, end.dispatch) == ("Succeeded", "the report", ())
    assert progress_text(TEAM, states) == "4/4"
    assert total_usage(states) == {"input_tokens": 40}


def test_an_invalid_output_is_retried_with_the_error_then_fails_when_attempts_run_out() -> None:
    states = {
        "research": StepState(phase="Succeeded", attempts=1, output="facts"),
        "critique": StepState(phase="Running", attempts=1),
        "outline": StepState(phase="Running", attempts=1),
    }
    states["outline"] = record_result(TEAM, states, "outline", succeeded('{"sections": [7]}'))
    assert states["outline"].phase == "Retrying"
    (retry,) = advance(TEAM, UID, INPUT, states).dispatch
    assert (retry.step, retry.attempt) == ("outline", 2)
    assert "Your previous answer was rejected: the output's JSON does not match" in retry.prompt
    states["outline"] = dispatched(states["outline"], retry, AT_MS)
    states["outline"] = record_result(TEAM, states, "outline", succeeded("no json at all"))
    assert states["outline"].phase == "Failed"
    assert states["outline"].message.startswith("OutputInvalid: the output holds no JSON")
    end = advance(TEAM, UID, INPUT, states)
    assert end.phase == "Failed"
    assert end.message.startswith("step outline failed: OutputInvalid")


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ({"status": "failed", "error": "BudgetExceeded: model call failed: 429 ..."}, "BudgetExceeded"),  # noqa: E501
        ({"status": "dead", "error": "model call failed: 500"}, "model call failed: 500"),
        ({"status": "failed", "error": "run cancelled"}, "run cancelled"),
    ],
)  # fmt: skip
def test_a_failed_task_fails_its_step_and_the_run(result: dict[str, Any], message: str) -> None:
    states = {"research": StepState(phase="Running", attempts=1)}
    states["research"] = record_result(TEAM, states, "research", result)
    assert states["research"].phase == "Failed"
    progress = advance(TEAM, UID, INPUT, states)
    assert progress.phase == "Failed"
    assert message in progress.message


def test_a_resumed_run_takes_over_the_succeeded_steps_whose_definition_did_not_change() -> None:
    earlier = {
        "research": StepState("Succeeded", 1, "t.research.1", "facts", usage={"input_tokens": 9}),
        "critique": StepState("Succeeded", 1, "t.critique.1", "weak points"),
        "outline": StepState("Failed", 2, "t.outline.2", message="OutputInvalid"),
        "summarize": StepState("Skipped"),
    }
    reused = reusable_steps(TEAM, TEAM, earlier, "report-1")
    assert sorted(reused) == ["critique", "research"]
    assert reused["research"].output == "facts"
    assert reused["research"].task_id == "t.research.1"  # its full output stays in Redis
    assert reused["research"].usage == {}  # paid by the earlier run, not again
    assert reused["research"].as_status()["reusedFrom"] == "report-1"
    moves = advance(TEAM, UID, {"topic": "x"}, reused).dispatch
    assert [move.step for move in moves] == ["outline"]  # only what is missing runs


def test_a_changed_step_and_everything_after_it_run_again() -> None:
    changed = dict(DIAMOND, steps=[dict(DIAMOND["steps"][0], prompt="Dig into {{ .input.topic }}"),
                                   *DIAMOND["steps"][1:]])  # fmt: skip
    earlier = {name: StepState("Succeeded", 1, f"t.{name}.1", name) for name in
               ("research", "critique", "outline", "summarize")}  # fmt: skip
    assert reusable_steps(TeamSpec.parse(changed), TEAM, earlier, "report-1") == {}


def test_a_step_past_its_timeout_fails_with_reason_timeout() -> None:
    team = TeamSpec.parse(
        {
            "roles": {"r": {"agent": "a"}},
            "steps": [
                {"name": "slow", "role": "r", "prompt": "p", "timeoutSeconds": 60},
                {"name": "free", "role": "r", "prompt": "p"},
            ],
        }
    )
    started = "2026-11-23T06:00:00.000Z"
    states = {
        "slow": StepState("Running", 1, "t.slow.1", started_at=started),
        "free": StepState("Running", 1, "t.free.1", started_at=started),
    }
    at_limit = timed_out(team, states, AT_MS - 123 + 60_000)
    assert at_limit == states  # exactly 60 s: not yet
    late = timed_out(team, states, AT_MS - 123 + 60_001)
    assert late["slow"].phase == "Failed"
    assert late["slow"].message == "Timeout: the step took longer than its timeoutSeconds (60)"
    assert late["free"] == states["free"]  # no timeout of its own
    assert advance(team, UID, {}, late).phase == "Failed"
