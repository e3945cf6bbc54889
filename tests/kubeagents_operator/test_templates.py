"""Prompt templates: the three reference forms, checks against the DAG, rendering."""

from __future__ import annotations

import pytest

from kubeagents_operator.errors import TemplateError
from kubeagents_operator.templates import problems, references, render

PROMPT = (
    "Write {{ .steps.outline.data.sections }} on {{ .input.topic }}: {{.steps.critique.output}}"
)


def test_the_three_reference_forms_are_parsed() -> None:
    assert [str(ref) for ref in references(PROMPT)] == [
        ".steps.outline.data.sections",
        ".input.topic",
        ".steps.critique.output",
    ]


@pytest.mark.parametrize(
    "template",
    ["{{ .input }}", "{{ len .input.topic }}", "{{ .steps.a.output.x }}", "{{ .env.HOME }}"],
)
def test_anything_else_is_refused_naming_the_action(template: str) -> None:
    with pytest.raises(TemplateError, match=r"^\{\{"):
        references(template)


def test_references_must_be_ancestors_and_declared_input_keys() -> None:
    found = problems(
        PROMPT,
        field="steps[3].prompt",
        allowed_steps=frozenset({"outline"}),
        input_keys=frozenset({"subject"}),
    )
    assert found == [
        "steps[3].prompt: {{ .input.topic }}: the input has no key topic",
        "steps[3].prompt: {{ .steps.critique.output }} refers to step critique, not an ancestor",
    ]
    assert (
        problems(
            PROMPT,
            field="p",
            allowed_steps=frozenset({"outline", "critique"}),
            input_keys=None,
        )
        == []
    )


def test_rendering_puts_text_as_is_and_other_values_as_json() -> None:
    rendered = render(
        PROMPT,
        run_input={"topic": "AI in healthcare"},
        outputs={"critique": "too long", "outline": "{...}"},
        data={"outline": {"sections": ["intro", "risks"]}},
    )
    assert rendered == 'Write ["intro","risks"] on AI in healthcare: too long'
    assert render("{{ .input.list.1 }}", run_input={"list": ["a", "b"]}, outputs={}, data={}) == "b"


def test_a_missing_value_is_named() -> None:
    with pytest.raises(TemplateError, match="no value at topic"):
        render("{{ .input.topic }}", run_input={}, outputs={}, data={})
    with pytest.raises(TemplateError, match="step outline has no JSON data"):
        render("{{ .steps.outline.data }}", run_input={}, outputs={}, data={})
