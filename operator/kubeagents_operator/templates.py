"""Prompt templates of a team: `{{ .input.PATH }}`, `{{ .steps.NAME.output }}` and
`{{ .steps.NAME.data.PATH }}`. Nothing else: no logic, no functions.

- `.input.PATH`: a value of the run's input (`PATH` is keys joined by dots; a digit indexes a
  list).
- `.steps.NAME.output`: the final text of step NAME.
- `.steps.NAME.data.PATH`: a value of step NAME's validated JSON output (`.data` alone: all of
  it).

A string renders as itself, any other value as compact JSON. A step may refer only to its
ancestors in the DAG (the team's `output` to any step); an unknown input key is an error when
the team's `inputSchema` declares its keys. Checks (`problems`) run when the team changes;
rendering (`render`) when a step is dispatched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubeagents_operator.errors import TemplateError

_ACTION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_SEGMENT = r"[A-Za-z0-9_-]+"
_INPUT = re.compile(rf"^\s*\.input((?:\.{_SEGMENT})+)\s*$")
_STEP = re.compile(rf"^\s*\.steps\.({_SEGMENT})\.(output|data)((?:\.{_SEGMENT})*)\s*$")


@dataclass(frozen=True)
class Reference:
    """One `{{ … }}` of a template."""

    kind: str  # "input", "output" or "data"
    step: str | None
    path: tuple[str, ...]

    def __str__(self) -> str:
        if self.kind == "input":
            return "." + ".".join(("input", *self.path))
        return "." + ".".join(("steps", str(self.step), self.kind, *self.path))


def references(template: str) -> list[Reference]:
    """The template's references, in order; TemplateError names an action it does not allow."""
    found: list[Reference] = []
    for match in _ACTION.finditer(template):
        action = match.group(1)
        if (parsed := _INPUT.match(action)) is not None:
            found.append(Reference("input", None, tuple(parsed.group(1)[1:].split("."))))
        elif (parsed := _STEP.match(action)) is not None:
            step, kind, path = parsed.groups()
            if kind == "output" and path:
                raise TemplateError(f"{{{{{action}}}}}: .output is text and has no fields")
            found.append(Reference(kind, step, tuple(path[1:].split(".")) if path else ()))
        else:
            raise TemplateError(
                f"{{{{{action}}}}}: only {{{{ .input.PATH }}}}, {{{{ .steps.NAME.output }}}} and "
                "{{ .steps.NAME.data.PATH }} are allowed"
            )
    return found


def problems(
    template: str,
    *,
    field: str,
    allowed_steps: frozenset[str],
    input_keys: frozenset[str] | None,
) -> list[str]:
    """What is wrong with `template` at `field`: syntax, steps that are not `allowed_steps`
    (a step's ancestors), input keys outside `input_keys` (None: not declared)."""
    try:
        refs = references(template)
    except TemplateError as error:
        return [f"{field}: {error}"]
    found = []
    for ref in refs:
        if ref.step is not None and ref.step not in allowed_steps:
            found.append(f"{field}: {{{{ {ref} }}}} refers to step {ref.step}, not an ancestor")
        if ref.kind == "input" and input_keys is not None and ref.path[0] not in input_keys:
            found.append(f"{field}: {{{{ {ref} }}}}: the input has no key {ref.path[0]}")
    return found


def render(
    template: str,
    *,
    run_input: Mapping[str, Any],
    outputs: Mapping[str, str],
    data: Mapping[str, Any],
) -> str:
    """The template with every reference replaced; TemplateError names a missing value."""

    def value_of(match: re.Match[str]) -> str:
        (ref,) = references(match.group(0))
        if ref.kind == "input":
            value = _lookup(run_input, ref.path, ref)
        elif ref.kind == "output":
            if ref.step not in outputs:
                raise TemplateError(f"{{{{ {ref} }}}}: step {ref.step} has no output")
            value = outputs[str(ref.step)]
        else:
            if ref.step not in data:
                raise TemplateError(f"{{{{ {ref} }}}}: step {ref.step} has no JSON data")
            value = _lookup(data[str(ref.step)], ref.path, ref)
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))

    return _ACTION.sub(value_of, template)


def _lookup(value: Any, path: tuple[str, ...], ref: Reference) -> Any:
    for segment in path:
        if isinstance(value, Mapping) and segment in value:
            value = value[segment]
        elif isinstance(value, list) and segment.isdigit() and int(segment) < len(value):
            value = value[int(segment)]
        else:
            raise TemplateError(f"{{{{ {ref} }}}}: no value at {segment}")
    return value
