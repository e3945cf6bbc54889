"""Where the agents of a team stand: a Deployment with Ready pods, and the semantic probe's
shared verdict. Shown on the team (`kubectl describe agentteam`: `status.agents` and the
condition `AgentsReady`) and on a run's step that waits in its agent's queue.

An agent is a Helm release of `charts/agent`: its Deployment carries the label
`kubeagents.io/agent: <agentName>`. Its probe publishes its verdict in Redis
(`kubeagents:{<ns>/<agent>}:probe:verdict`, docs/architecture.md); the runtime pulls no task
while the probe says NotReady, so a step of that agent waits in the queue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kubeagents.agent import agent_key
from kubeagents.redis_link import RedisLink
from kubeagents_operator.kube import KubeClient

AGENT_LABEL = "kubeagents.io/agent"


@dataclass(frozen=True)
class AgentHealth:
    agent: str
    ready: bool
    message: str

    def as_status(self) -> dict[str, Any]:
        return {"agent": self.agent, "ready": self.ready, "message": self.message}


async def probe_problem(link: RedisLink, namespace: str, agent: str) -> str:
    """Why the agent's probe holds its runtimes back ("" when it does not, or is unknown)."""
    raw = await link.execute("GET", agent_key(namespace, agent, "probe:verdict"))
    if not raw:
        return ""
    try:
        verdict = json.loads(raw)
    except ValueError:
        return ""
    if verdict.get("passing") is None:
        return "its semantic probe has not passed yet"
    if verdict.get("passing"):
        return ""
    last = verdict.get("last") or {}
    detail = ": ".join(str(part) for part in (last.get("reason"), last.get("detail")) if part)
    return "its semantic probe fails" + (f" ({detail})" if detail else "")


async def agent_health(
    kube: KubeClient, link: RedisLink, namespace: str, agent: str
) -> AgentHealth:
    deployments = await kube.deployments(namespace, f"{AGENT_LABEL}={agent}")
    problem = await probe_problem(link, namespace, agent)
    if not deployments:
        message = f"no Deployment labelled {AGENT_LABEL}={agent} in {namespace}"
        return AgentHealth(agent, False, message + (f"; {problem}" if problem else ""))
    wanted = sum(int((item.get("spec") or {}).get("replicas", 1)) for item in deployments)
    ready = sum(int((item.get("status") or {}).get("readyReplicas") or 0) for item in deployments)
    message = f"{ready}/{wanted} pods Ready" + (f"; {problem}" if problem else "")
    return AgentHealth(agent, ready > 0 and not problem, message)
