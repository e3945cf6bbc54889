"""The conversation of a task so far, saved in Redis after every model turn and every tool
result, so a task reclaimed from a dead pod resumes where it stopped: completed tool calls are
not executed again, completed model turns are not asked again.

Stored as JSON in `…:task:<id>:checkpoint` (expires with the result; deleted once the task has a
final result).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from kubeagents.redis_link import RedisLink
from kubeagents.tasks import RESULT_TTL_SECONDS, QueueKeys

USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


@dataclass
class Conversation:
    messages: list[dict[str, Any]]  # Anthropic messages: user, assistant, user (tool results)...
    tool_results: list[dict[str, Any]] = field(default_factory=list)  # of the last turn, so far
    usage: dict[str, int] = field(default_factory=lambda: dict.fromkeys(USAGE_FIELDS, 0))
    turns: int = 0
    tool_calls: int = 0
    stop_reason: str = ""

    @property
    def tokens(self) -> int:
        return sum(self.usage.values())

    def add_usage(self, usage: Any) -> None:
        for name in USAGE_FIELDS:
            self.usage[name] += int(getattr(usage, name, 0) or 0)


class Checkpoints:
    def __init__(self, link: RedisLink, keys: QueueKeys) -> None:
        self.link = link
        self.keys = keys

    async def load(self, task_id: str) -> Conversation | None:
        raw = await self.link.execute("GET", self.keys.checkpoint(task_id))
        if raw is None:
            return None
        data = json.loads(raw)
        return Conversation(**data)

    async def save(self, task_id: str, conversation: Conversation) -> None:
        # a shallow dict, not dataclasses.asdict, which deep-copies the whole conversation first
        state = {item.name: getattr(conversation, item.name) for item in fields(conversation)}
        payload = json.dumps(state, separators=(",", ":"))
        await self.link.execute(
            "SET", self.keys.checkpoint(task_id), payload, "EX", RESULT_TTL_SECONDS
        )
