"""The diamond team of the operator tests: research, then critique and outline in parallel,
then summarize; over the two agents of `harness.agents`."""

from __future__ import annotations

from typing import Any

SECTIONS = '```json\n{"sections": ["intro", "risks"]}\n```'
DIAMOND: dict[str, Any] = {
    "apiVersion": "kubeagents.io/v1alpha1",
    "kind": "AgentTeam",
    "metadata": {"name": "research-then-summarize"},
    "spec": {
        "roles": {"researcher": {"agent": "research"}, "writer": {"agent": "summarizer"}},
        "inputSchema": {"type": "object", "required": ["topic"],
                        "properties": {"topic": {"type": "string"}}},
        "steps": [
            {"name": "research", "role": "researcher", "prompt": "Research {{ .input.topic }}"},
            {"name": "critique", "role": "researcher", "dependsOn": ["research"],
             "prompt": "Critique: {{ .steps.research.output }}"},
            {"name": "outline", "role": "writer", "dependsOn": ["research"],
             "prompt": "Outline: {{ .steps.research.output }}",
             "outputSchema": {"type": "object", "required": ["sections"]}},
            {"name": "summarize", "role": "writer", "dependsOn": ["critique", "outline"],
             "prompt": "Write {{ .steps.outline.data.sections }}, fixing: {{ .steps.critique.output }}"},  # noqa: E501
        ],
        "output": "{{ .steps.summarize.output }}",
        "budget": {"tokens": 100000},
    },
}  # fmt: skip
INPUT = {"topic": "AI in healthcare"}
