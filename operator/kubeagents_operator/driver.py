"""Driving a run over the agents' queues in Redis: dispatch, collect, wait, cancel.

The Redis half of the operator, with no Kubernetes in it, so it is tested against real
runtimes on its own. The run's status (`StepState`s) is the memory; Redis is the truth of what
the tasks did:

- `dispatch` submits every task `runs.advance` asks for through the task contract
  (`kubeagents.tasks.TaskQueue`), with the run's budget and ids. Task ids are deterministic, so
  a dispatch repeated after a crash queues nothing twice.
- `collect` reads the result of every step that is running or retrying and folds the final
  ones in (`runs.record_result`): after a restart, this alone catches up with everything that
  finished meanwhile.
- `wait` blocks on the agents' completion streams (`…:tasks:done`) until an entry of this run
  arrives, or `timeout` passes: the wake-up signal, never the truth.
- `cancel` sets the run's cancel mark on every agent of the team.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from kubeagents.redis_link import RedisLink
from kubeagents.tasks import FINAL_STATUSES, QueueKeys, TaskQueue, as_fields, as_text
from kubeagents_operator.agent_health import probe_problem
from kubeagents_operator.runs import (
    Progress,
    StepState,
    TeamSpec,
    advance,
    dispatched,
    record_result,
)
from kubeagents_operator.tracing import traceparent

CANCEL_MARK_SECONDS = 7 * 86400
WAIT_BLOCK_MS = 1000


@dataclass
class DoneCursor:
    """Where a run's reading of each agent's completion stream stands (stream ids), and its
    reads still blocking (by wait link)."""

    positions: dict[str, str] = field(default_factory=dict)
    pending: dict[int, asyncio.Future[set[str]]] = field(default_factory=dict)

    async def close(self) -> None:
        for read in self.pending.values():
            read.cancel()
        await asyncio.gather(*self.pending.values(), return_exceptions=True)
        self.pending.clear()


class RunDriver:
    """Drives runs over the queues of the agents of one namespace."""

    def __init__(
        self,
        link_for: Callable[[str], RedisLink],
        *,
        namespace: str,
        wait_link_for: Callable[[str], RedisLink] | None = None,
    ) -> None:
        self.link_for = link_for  # agent -> the link to the node holding its keys
        # XREAD BLOCK holds its connection: the waits get links of their own.
        self.wait_link_for = wait_link_for or link_for
        self.namespace = namespace

    def queue(self, agent: str) -> TaskQueue:
        return TaskQueue(self.link_for(agent), namespace=self.namespace, agent=agent)

    async def dispatch(
        self,
        team: TeamSpec,
        *,
        run: str,
        run_uid: str,
        run_input: Mapping[str, Any],
        states: Mapping[str, StepState],
    ) -> tuple[dict[str, StepState], Progress]:
        """Submit what the run needs next; the step states with those tasks running. Each task
        carries its step attempt's `traceparent` (`tracing`: in the run's trace)."""
        progress = advance(team, run_uid, run_input, states)
        updated = dict(states)
        for move in progress.dispatch:
            await self.queue(move.agent).submit(
                {"prompt": move.prompt},
                task_id=move.task_id,
                traceparent=traceparent(run_uid, move.step, move.attempt),
                run=run,
                step=move.step,
                run_budget=team.run_budget_header(run, move.step),
            )
            at_ms = time.time_ns() // 1_000_000
            updated[move.step] = dispatched(updated.get(move.step, StepState()), move, at_ms)
        return updated, progress

    async def collect(
        self, team: TeamSpec, states: Mapping[str, StepState]
    ) -> dict[str, StepState]:
        """Fold in the final results of the steps that are running."""
        updated = dict(states)
        for name, state in states.items():
            if state.phase != "Running" or not state.task_id:
                continue
            agent = team.agent_of(name)
            result = await self.queue(agent).result(state.task_id)
            status = (result or {}).get("status")
            if result is None or status not in FINAL_STATUSES:
                message = await self._held(agent) if status == "queued" else ""
                if message != state.message:
                    updated[name] = replace(state, message=message)
                continue
            updated[name] = record_result(team, updated, name, result)
        return updated

    async def _held(self, agent: str) -> str:
        """Why a step waits in its agent's queue (the step's message while it does)."""
        problem = await probe_problem(self.link_for(agent), self.namespace, agent)
        return f"queued: agent {agent} " + (
            f"is not Ready: {problem}" if problem else "has no runtime that took it yet"
        )

    async def start_cursor(self, team: TeamSpec) -> DoneCursor:
        """A cursor at the end of every agent's completion stream: what finished before is
        found by `collect` (it reads the results themselves), so `wait` never reads the past."""
        cursor = DoneCursor()
        for agent in sorted(set(team.roles.values())):
            stream = QueueKeys.of(self.namespace, agent).done
            last = await self.link_for(agent).execute("XREVRANGE", stream, "+", "-", "COUNT", 1)
            cursor.positions[agent] = as_text(last[0][0]) if last else "0-0"
        return cursor

    async def wait(self, team: TeamSpec, run: str, cursor: DoneCursor, within: float) -> bool:
        """Block until an agent of the team announces a finished task of `run` (True), or
        `within` seconds pass (False). `cursor` remembers what was read, and the reads still
        blocking (they carry over to the next wait; `DoneCursor.close` ends them).

        Agents whose waits share a link are read with one `XREAD` naming all their streams (a
        connection runs one blocking command at a time, so one read per agent would wait out
        each other's blocks); on Redis Cluster each agent has a link of its own, all read at
        once, and the first answer wins."""
        groups: dict[int, tuple[RedisLink, list[str]]] = {}
        for agent in sorted(set(team.roles.values())):
            cursor.positions.setdefault(agent, "0-0")
            link = self.wait_link_for(agent)
            groups.setdefault(id(link), (link, []))[1].append(agent)
        deadline = asyncio.get_running_loop().time() + within
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            for key, (link, agents) in groups.items():
                if key not in cursor.pending:
                    read = self._read_done(link, agents, cursor, WAIT_BLOCK_MS)
                    cursor.pending[key] = asyncio.ensure_future(read)
            done, _ = await asyncio.wait(
                cursor.pending.values(), timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                return False
            found = False
            for key, task in list(cursor.pending.items()):
                if task in done:
                    del cursor.pending[key]
                    found = run in task.result() or found
            if found:
                return True

    async def _read_done(
        self, link: RedisLink, agents: list[str], cursor: DoneCursor, block_ms: int
    ) -> set[str]:
        streams = {QueueKeys.of(self.namespace, agent).done: agent for agent in agents}
        reply = await link.execute(
            "XREAD", "COUNT", 100, "BLOCK", block_ms, "STREAMS", *streams,
            *(cursor.positions[agent] for agent in agents),
        )  # fmt: skip
        runs: set[str] = set()
        for stream, entries in reply or ():
            agent = streams[as_text(stream)]
            for entry_id, flat in entries:
                cursor.positions[agent] = as_text(entry_id)
                runs.add(as_fields(flat).get("run", ""))
        return runs

    async def cost_usd(self, team: TeamSpec, run: str, step: str = "") -> float:
        """What the proxies metered for the run (or one of its steps), in US dollars: the
        `used_usd` of the run's ledger (`kubeagents:{<ns>/run:<run>}:run:totals`, or
        `…:step:<step>:totals`; docs/architecture.md); the operator keeps no price table."""
        any_agent = next(iter(sorted(set(team.roles.values()))))
        scope = f"step:{step}" if step else "run"
        key = f"kubeagents:{{{self.namespace}/run:{run}}}:{scope}:totals"
        nanos = await self.link_for(any_agent).execute("HGET", key, "used_usd")
        return int(nanos or 0) / 1e9

    async def cancel(self, team: TeamSpec, run: str) -> None:
        """Set the run's cancel mark on every agent of the team (their runtimes stop the run's
        tasks before the next model turn)."""
        for agent in sorted(set(team.roles.values())):
            key = QueueKeys.of(self.namespace, agent).cancelled(run)
            await self.link_for(agent).execute("SET", key, "1", "EX", CANCEL_MARK_SECONDS)


def skipped(states: Mapping[str, StepState], team: TeamSpec) -> dict[str, StepState]:
    """After a failure or a cancel: every step that never started is `Skipped`."""
    return {
        step.name: (
            replace(states.get(step.name, StepState()), phase="Skipped")
            if states.get(step.name, StepState()).phase == "Pending"
            else states.get(step.name, StepState())
        )
        for step in team.steps
    }
