"""The semantic verdict shared by every pod of an agent, in Redis: one model call per interval
per agent, however many replicas run.

The verdict is shared only by pods that run the same check: its keys carry the check's digest
(`check_digest`: the model, the system prompt, the validator prompt and the expectation). During
a rollout that changes any of them, the new pods run their own check: they cannot become Ready on
the old pods' verdict, and a check the new version fails does not turn the old pods NotReady.

Keys (the agent's hash tag, like every key of the project; docs/architecture.md):

- `kubeagents:{<ns>/<agent>}:probe:claim:<digest>`: string, expires after the interval: the pod
  that runs this interval's check;
- `kubeagents:{<ns>/<agent>}:probe:verdict:<digest>`: JSON string: `seq`, `at_ms` (Redis time),
  `by`, and the check's state: `passing`, `consecutive_failures`, `consecutive_successes`,
  `last` (the result);
- `kubeagents:{<ns>/<agent>}:probe:verdict`: a copy of the latest verdict published under any
  digest, plus `digest`, for observers (the operator explains held steps with it).

A pod reads the verdict every few seconds (`read`, which also returns Redis's clock, so the
verdict's age never depends on a pod's clock). When the verdict is older than the interval it
tries `claim`: `SET NX PX interval`, so at most one pod per interval wins; the winner runs the
check, computes the new state from the verdict it read (the hysteresis is shared, so every pod
reports the same), and `publish`es it only if nobody published since (compare-and-set on `seq`).
A pod that dies mid-check leaves the claim to expire; the next pod takes over one interval later.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from kubeagents.agent import agent_key
from kubeagents.redis_link import RedisLink
from kubeagents_probe.verdicts import CheckState

_READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {redis.call('GET', KEYS[1]) or '', now}
"""

_PUBLISH = """
local current = redis.call('GET', KEYS[1])
local seq = 0
if current then seq = cjson.decode(current)['seq'] end
if seq ~= tonumber(ARGV[1]) then return '' end
local t = redis.call('TIME')
local verdict = cjson.decode(ARGV[2])
verdict['seq'] = seq + 1
verdict['at_ms'] = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local encoded = cjson.encode(verdict)
redis.call('SET', KEYS[1], encoded, 'PX', ARGV[3])
redis.call('SET', KEYS[2], encoded, 'PX', ARGV[3])
return encoded
"""


@dataclass(frozen=True)
class Verdict:
    """The shared semantic verdict as read from Redis."""

    seq: int
    at_ms: int
    by: str
    state: CheckState

    @classmethod
    def from_json(cls, encoded: bytes | str) -> Verdict:
        data: dict[str, Any] = json.loads(encoded)
        return cls(
            seq=int(data["seq"]),
            at_ms=int(data["at_ms"]),
            by=str(data.get("by", "")),
            state=CheckState.from_json(data),
        )


def check_digest(definition: dict[str, Any]) -> str:
    """A short digest of what the semantic check asks and expects (JSON of `definition`)."""
    encoded = json.dumps(definition, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


class SharedVerdict:
    def __init__(self, link: RedisLink, *, namespace: str, agent: str, digest: str) -> None:
        self.digest = digest
        self.claim_key = agent_key(namespace, agent, f"probe:claim:{digest}")
        self.verdict_key = agent_key(namespace, agent, f"probe:verdict:{digest}")
        self.latest_key = agent_key(namespace, agent, "probe:verdict")
        self._link = link
        self._read = link.register_script(_READ)
        self._publish = link.register_script(_PUBLISH)

    async def read(self) -> tuple[Verdict | None, int]:
        """The current verdict (None when there is none) and Redis's clock (unix ms)."""
        encoded, now_ms = await self._read(keys=[self.verdict_key])
        return (Verdict.from_json(encoded) if encoded else None), int(now_ms)

    async def claim(self, pod: str, *, ttl_ms: int) -> bool:
        """Whether this pod runs the check now (at most one pod per `ttl_ms`)."""
        reply = await self._link.execute("SET", self.claim_key, pod, "NX", "PX", ttl_ms)
        return reply is not None

    async def publish(
        self, *, after_seq: int, by: str, state: CheckState, keep_ms: int
    ) -> Verdict | None:
        """Store the new state unless another pod published after `after_seq`; kept `keep_ms`."""
        payload = json.dumps({"by": by, "digest": self.digest, **state.to_json()})
        encoded = await self._publish(
            keys=[self.verdict_key, self.latest_key], args=[after_seq, payload, keep_ms]
        )
        return Verdict.from_json(encoded) if encoded else None
