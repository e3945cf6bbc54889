"""The steps' graph: checks naming the steps, ancestry, readiness."""

from __future__ import annotations

from kubeagents_operator.dag import StepNode, ancestors, descendants, problems, ready

DIAMOND = [
    StepNode("research"),
    StepNode("critique", ("research",)),
    StepNode("outline", ("research",)),
    StepNode("summarize", ("critique", "outline")),
]


def test_a_diamond_is_a_valid_dag_with_its_ancestors() -> None:
    assert problems(DIAMOND) == []
    assert ancestors(DIAMOND)["summarize"] == {"research", "critique", "outline"}
    assert ancestors(DIAMOND)["research"] == frozenset()
    assert descendants(DIAMOND, "research") == {"critique", "outline", "summarize"}


def test_independent_steps_are_ready_together_once_their_dependency_succeeded() -> None:
    assert ready(DIAMOND, {}) == ["research"]
    assert ready(DIAMOND, {"research": "Running"}) == []
    assert ready(DIAMOND, {"research": "Succeeded"}) == ["critique", "outline"]
    phases = {"research": "Succeeded", "critique": "Succeeded", "outline": "Running"}
    assert ready(DIAMOND, phases) == []
    assert ready(DIAMOND, {**phases, "outline": "Succeeded"}) == ["summarize"]


def test_a_cycle_is_named_step_by_step() -> None:
    steps = [StepNode("a", ("c",)), StepNode("b", ("a",)), StepNode("c", ("b",))]
    assert problems(steps) == ["steps: dependency cycle a -> c -> b -> a"]


def test_unknown_self_and_duplicate_dependencies_are_named() -> None:
    steps = [StepNode("a", ("a",)), StepNode("b", ("ghost",)), StepNode("b")]
    assert problems(steps) == [
        "steps: b appears more than once",
        "steps.a.dependsOn: a step cannot depend on itself",
        "steps.b.dependsOn: unknown step ghost",
    ]
