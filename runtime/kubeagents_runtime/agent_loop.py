"""The tool-use loop of one task: ask the model (through the pod's proxy, with the official SDK),
run the tools it asks for (MCP), give it the results, until it ends its turn, the turn limit is
reached or the task's token ceiling is spent.

Each completed model turn and each tool result is checkpointed first (see checkpoint), so a
resumed task continues from the last checkpoint: a tool call whose result was saved is not run
again. Tool errors go back to the model as `is_error` tool results; they do not fail the task.
Failures of the model call raise (see failures.classify); the worker decides about retries.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anthropic
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from kubeagents_runtime.checkpoint import Checkpoints, Conversation
from kubeagents_runtime.errors import RunCancelled
from kubeagents_runtime.metrics import RuntimeMetrics
from kubeagents_runtime.settings import RuntimeSettings
from kubeagents_runtime.toolbox import Toolbox

TRACER_NAME = "kubeagents.runtime"


@dataclass(frozen=True)
class Outcome:
    """What a finished loop produced."""

    output: str
    stop_reason: str  # end_turn, max_tokens, stop_sequence, max_turns, token_ceiling, ...
    conversation: Conversation

    @property
    def output_json(self) -> Any:
        try:
            return json.loads(self.output)
        except ValueError:
            return None


def final_text(conversation: Conversation) -> str:
    for message in reversed(conversation.messages):
        if message["role"] == "assistant":
            return "".join(
                block.get("text", "") for block in message["content"] if block["type"] == "text"
            )
    return ""


class AgentLoop:
    def __init__(
        self,
        settings: RuntimeSettings,
        client: anthropic.AsyncAnthropic,
        toolbox: Toolbox,
        checkpoints: Checkpoints,
        metrics: RuntimeMetrics,
        tracer: trace.Tracer,
    ) -> None:
        self.settings = settings
        self.client = client
        self.toolbox = toolbox
        self.checkpoints = checkpoints
        self.metrics = metrics
        self.tracer = tracer
        self.system = settings.system_prompt()

    async def run(
        self,
        task_id: str,
        prompt: str,
        trace_headers: dict[str, str],
        cancelled: Callable[[], Awaitable[bool]] | None = None,
    ) -> Outcome:
        """Run the task to its end; `cancelled` (a team run's cancel mark) is asked before every
        model turn, and a True raises `RunCancelled`: no model call after a cancel beyond the
        one in flight."""
        conversation = await self.checkpoints.load(task_id)
        if conversation is None:
            conversation = Conversation(messages=[{"role": "user", "content": prompt}])
        while True:
            last = conversation.messages[-1]
            if last["role"] == "assistant":
                uses = [block for block in last["content"] if block["type"] == "tool_use"]
                if not uses or conversation.stop_reason != "tool_use":
                    return Outcome(final_text(conversation), conversation.stop_reason, conversation)
                await self._run_tools(task_id, conversation, uses)
                continue
            if conversation.turns >= self.settings.max_turns:
                return Outcome(final_text(conversation), "max_turns", conversation)
            left = self.settings.max_task_tokens - conversation.tokens
            if left <= 0:
                return Outcome(final_text(conversation), "token_ceiling", conversation)
            if cancelled is not None and await cancelled():
                raise RunCancelled
            await self._model_turn(task_id, conversation, left, trace_headers)

    async def _model_turn(
        self,
        task_id: str,
        conversation: Conversation,
        tokens_left: int,
        trace_headers: dict[str, str],
    ) -> None:
        tools, _ = self.toolbox.tools()
        request: dict[str, Any] = {
            "model": self.settings.model,
            "max_tokens": max(1, min(self.settings.max_tokens, tokens_left)),
            "messages": conversation.messages,
        }
        if self.system:
            request["system"] = self.system
        if tools:
            request["tools"] = tools
        response = await self.client.messages.create(**request, extra_headers=trace_headers)
        conversation.turns += 1
        conversation.add_usage(response.usage)
        conversation.stop_reason = response.stop_reason or ""
        content = [block.model_dump(exclude_none=True) for block in response.content]
        conversation.messages.append({"role": "assistant", "content": content})
        self.metrics.model_turns.inc()
        await self.checkpoints.save(task_id, conversation)

    async def _run_tools(
        self, task_id: str, conversation: Conversation, uses: list[dict[str, Any]]
    ) -> None:
        _, routes = self.toolbox.tools()
        done = {result["tool_use_id"] for result in conversation.tool_results}
        for use in uses:
            if use["id"] in done:
                continue  # ran before a crash: its result is in the checkpoint
            result = await self._run_tool(use, routes)
            conversation.tool_results.append(result)
            conversation.tool_calls += 1
            await self.checkpoints.save(task_id, conversation)
        conversation.messages.append({"role": "user", "content": conversation.tool_results})
        conversation.tool_results = []
        await self.checkpoints.save(task_id, conversation)

    async def _run_tool(
        self, use: dict[str, Any], routes: dict[str, tuple[str, str]]
    ) -> dict[str, Any]:
        name = use["name"]
        with self.tracer.start_as_current_span(
            f"execute_tool {name}",
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": name,
                "gen_ai.tool.call.id": use["id"],
            },
        ) as span:
            route = routes.get(name)
            if route is None:
                text, is_error = f"tool {name} is not available", True
            else:
                result = await self.toolbox.call(route[0], route[1], dict(use.get("input") or {}))
                text, is_error = result.text, result.is_error
            if is_error:
                span.set_status(Status(StatusCode.ERROR, text[:200]))
                span.set_attribute("error.type", "tool_error")
            self.metrics.tool_calls.labels(name, "error" if is_error else "ok").inc()
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": use["id"], "content": text}
        if is_error:
            block["is_error"] = True
        return block
