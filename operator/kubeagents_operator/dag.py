"""The steps of a team as a DAG: checks, ancestry, and which steps may start.

A step names the steps it `dependsOn`. The graph is valid when every dependency names another
step of the team and there is no cycle; `problems` lists what is wrong, each naming the steps
(a cycle as `a -> b -> a`). Everything here is a pure function of the steps' names and
dependencies, so the operator's handlers stay thin and these rules are tested on their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StepNode:
    """A step's place in the graph."""

    name: str
    depends_on: tuple[str, ...] = ()


def problems(steps: Sequence[StepNode]) -> list[str]:
    """Everything wrong with the graph, each naming the steps; empty when it is a DAG."""
    found: list[str] = []
    names = [step.name for step in steps]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            found.append(f"steps: {name} appears more than once")
        seen.add(name)
    for step in steps:
        for dependency in step.depends_on:
            if dependency == step.name:
                found.append(f"steps.{step.name}.dependsOn: a step cannot depend on itself")
            elif dependency not in seen:
                found.append(f"steps.{step.name}.dependsOn: unknown step {dependency}")
    if not found:
        cycle = find_cycle(steps)
        if cycle:
            found.append(f"steps: dependency cycle {' -> '.join(cycle)}")
    return found


def find_cycle(steps: Sequence[StepNode]) -> list[str]:
    """One cycle as a closed path (`[a, b, a]`), or [] when there is none."""
    graph = {step.name: step.depends_on for step in steps}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str]:
        state[name] = 1
        path.append(name)
        for dependency in graph.get(name, ()):
            if state.get(dependency) == 1:
                return [*path[path.index(dependency) :], dependency]
            if dependency in graph and state.get(dependency) is None:
                cycle = visit(dependency)
                if cycle:
                    return cycle
        path.pop()
        state[name] = 2
        return []

    for step in steps:
        if state.get(step.name) is None:
            cycle = visit(step.name)
            if cycle:
                return cycle
    return []


def ancestors(steps: Sequence[StepNode]) -> dict[str, frozenset[str]]:
    """Every step's transitive dependencies (assumes a valid DAG)."""
    graph = {step.name: step.depends_on for step in steps}
    memo: dict[str, frozenset[str]] = {}

    def of(name: str) -> frozenset[str]:
        known = memo.get(name)
        if known is None:
            found: set[str] = set()
            for dependency in graph.get(name, ()):
                found.add(dependency)
                found |= of(dependency)
            known = memo[name] = frozenset(found)
        return known

    return {step.name: of(step.name) for step in steps}


def ready(
    steps: Sequence[StepNode], phases: Mapping[str, str], *, done: Iterable[str] = ("Succeeded",)
) -> list[str]:
    """The steps that may start now: `Pending`, with every dependency in a `done` phase, in the
    team's order."""
    finished = frozenset(done)
    return [
        step.name
        for step in steps
        if phases.get(step.name, "Pending") == "Pending"
        and all(phases.get(dependency) in finished for dependency in step.depends_on)
    ]


def descendants(steps: Sequence[StepNode], name: str) -> frozenset[str]:
    """Every step that depends on `name`, directly or not."""
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for step in steps:
            if step.name not in found and (
                name in step.depends_on or found.intersection(step.depends_on)
            ):
                found.add(step.name)
                changed = True
    return frozenset(found)
