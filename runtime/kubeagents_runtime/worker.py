"""`Worker`: takes the agent's tasks from its Redis stream and runs them, losing nothing.

- One stream and one consumer group per agent (kubeagents.tasks); the consumer is the pod.
- Before pulling, it asks the probe's `/readyz`: while that is not 200, it pulls nothing (and
  reclaims nothing), so a NotReady pod stops taking work, not only traffic.
- At most `max_concurrent_tasks` run at once; it reads only as many messages as it has free slots.
- Each attempt: `begin` (skipped if the task is already final) → the tool-use loop, bounded by
  `task_timeout_seconds` → `finish` (the result is stored and the message acknowledged in one
  script) or, on failure, `retry` (backoff with jitter, or the proxy's `retry-after`) / `bury`
  (dead-letter stream) / `finish` as failed for a permanent error.
- While a task runs, the pod renews its claim on it every third of the visibility timeout
  (`XCLAIM … JUSTID`); a message idle longer than that belongs to a dead pod and is taken over
  (`XAUTOCLAIM`). The taker resumes from the task's checkpoint.
- On SIGTERM it stops pulling, lets running tasks finish within the grace period, and leaves the
  rest pending (they are reclaimed by the other pods).

Blocking reads (`XREADGROUP BLOCK`) use a connection of their own, so they never delay the
writes of running tasks, which share the other connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from redis.exceptions import RedisError, ResponseError

from kubeagents.backoff import Backoff
from kubeagents.headers import RUN_BUDGET_HEADER
from kubeagents.logs import log_event
from kubeagents.redis_link import RedisLink
from kubeagents.tasks import GROUP, MessageField, QueueKeys, as_fields, as_text, parse_input
from kubeagents_runtime.agent_loop import AgentLoop
from kubeagents_runtime.errors import Permanent, TaskFailure
from kubeagents_runtime.failures import classify
from kubeagents_runtime.metrics import RuntimeMetrics
from kubeagents_runtime.settings import RuntimeSettings
from kubeagents_runtime.task_store import TaskStore

log = logging.getLogger("kubeagents.runtime")
PROPAGATOR = TraceContextTextMapPropagator()
READ_BLOCK_MS = 1000
RELEASE_EVERY_SECONDS = 0.5


class Worker:
    def __init__(
        self,
        settings: RuntimeSettings,
        link: RedisLink,
        reader: RedisLink,
        loop: AgentLoop,
        metrics: RuntimeMetrics,
        tracer: trace.Tracer,
    ) -> None:
        self.settings = settings
        self.backoff = Backoff(settings.backoff_base_seconds, settings.backoff_max_seconds)
        self.link = link
        self.reader = reader
        self.agent_loop = loop
        self.metrics = metrics
        self.tracer = tracer
        self.keys = QueueKeys.of(settings.namespace, settings.agent)
        self.store = TaskStore(link, self.keys)
        self.slots = asyncio.Semaphore(settings.max_concurrent_tasks)
        self.running: dict[str, asyncio.Task[None]] = {}  # message id -> its task
        self.stopping = asyncio.Event()
        self.ready = False
        self._ready_checked = 0.0
        self._http: aiohttp.ClientSession | None = None

    # --- the loops ---------------------------------------------------------------------------

    async def run(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        try:
            await self._ensure_group()
            await asyncio.gather(self._pull_loop(), self._upkeep_loop())
        finally:
            await self._http.close()

    async def drain(self) -> None:
        """Stop pulling; wait for running tasks up to the grace period, then leave them pending."""
        self.stopping.set()
        await self.reader.aclose()  # aborts a blocked XREADGROUP: Redis delivers nothing more
        running = list(self.running.values())
        if running:
            _, late = await asyncio.wait(running, timeout=self.settings.shutdown_grace_seconds)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)

    async def _ensure_group(self) -> None:
        try:
            await self.link.execute("XGROUP", "CREATE", self.keys.stream, GROUP, "0", "MKSTREAM")
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _pull_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                if not await self._gate():
                    await self._pause(self.settings.readiness_poll_seconds)
                    continue
                await self.slots.acquire()  # wait for a free slot ...
                self.slots.release()  # ... which _start takes
                if self.stopping.is_set():
                    break
                free = self._free_slots()
                reply = await self.reader.execute(
                    "XREADGROUP", "GROUP", GROUP, self.settings.pod_name,
                    "COUNT", free, "BLOCK", READ_BLOCK_MS, "STREAMS", self.keys.stream, ">",
                )  # fmt: skip
                for _stream, messages in reply or []:
                    for message_id, flat in messages:
                        await self._start(as_text(message_id), as_fields(flat))
            except (RedisError, OSError) as error:
                if self.stopping.is_set():
                    break  # drain() closed the reading connection
                log.warning("reading the queue failed: %s", error)
                await self._pause(1.0)

    async def _upkeep_loop(self) -> None:
        """Renew the claims of running tasks, take over abandoned ones, release due retries."""
        renew_every = self.settings.visibility_timeout_seconds / 3
        last_renew = 0.0
        while not self.stopping.is_set():
            try:
                await self.store.release_due()
                now = time.monotonic()
                if now - last_renew >= renew_every:
                    last_renew = now
                    await self._renew()
                    if await self._gate():
                        await self._reclaim()
                    await self._refresh_queue_gauges()
            except (RedisError, OSError) as error:
                log.warning("queue upkeep failed: %s", error)
            await self._pause(RELEASE_EVERY_SECONDS)

    async def _renew(self) -> None:
        if self.running:
            await self.link.execute(
                "XCLAIM", self.keys.stream, GROUP, self.settings.pod_name, 0,
                *self.running, "JUSTID",
            )  # fmt: skip

    async def _reclaim(self) -> None:
        idle_ms = int(self.settings.visibility_timeout_seconds * 1000)
        free = self._free_slots()
        if free <= 0:
            return
        reply = await self.link.execute(
            "XAUTOCLAIM", self.keys.stream, GROUP, self.settings.pod_name, idle_ms, "0-0",
            "COUNT", free,
        )  # fmt: skip
        for message_id, flat in reply[1]:
            if flat is None:
                continue  # trimmed away
            message = as_fields(flat)
            task_id = message.get(MessageField.ID, "")
            self.metrics.reclaimed.inc()
            taken_over = await self.link.execute(
                "HINCRBY", self.keys.result(task_id), "reclaims", 1
            )
            if int(taken_over) > self.settings.max_attempts:
                # Every pod that ran it died: a task that kills its runtime must not loop forever.
                error = f"taken over {taken_over} times: the pods running it stopped"
                attempt = int(message.get(MessageField.ATTEMPT, "1") or 1)
                if await self.store.bury(
                    as_text(message_id), task_id, message=message, error=error, attempts=attempt
                ):
                    self.metrics.tasks.labels("dead").inc()
                    self.metrics.dead_letters.inc()
                continue
            log.info("taking over task %s (message %s)", task_id, as_text(message_id))
            await self._start(as_text(message_id), message)

    async def _refresh_queue_gauges(self) -> None:
        for group in await self.link.execute("XINFO", "GROUPS", self.keys.stream):
            info = as_fields(group)
            if info.get("name") == GROUP:
                self.metrics.queue_pending.set(int(info.get("pending", 0)))
                lag = info.get("lag", "")
                if lag.isdigit():
                    self.metrics.queue_lag.set(int(lag))

    # --- one message -------------------------------------------------------------------------

    def _free_slots(self) -> int:
        return self.settings.max_concurrent_tasks - len(self.running)

    async def _start(self, message_id: str, message: dict[str, str]) -> None:
        if message_id in self.running or self.stopping.is_set():
            return  # when stopping: left pending, reclaimed by another pod
        await self.slots.acquire()
        task = asyncio.create_task(self._attempt(message_id, message))
        self.running[message_id] = task
        self.metrics.in_flight.set(len(self.running))

        def done(_: asyncio.Task[None]) -> None:
            self.running.pop(message_id, None)
            self.slots.release()
            self.metrics.in_flight.set(len(self.running))

        task.add_done_callback(done)

    async def _attempt(self, message_id: str, message: dict[str, str]) -> None:
        task_id = message.get(MessageField.ID, "")
        attempt = int(message.get(MessageField.ATTEMPT, "1") or 1)
        context = PROPAGATOR.extract({"traceparent": message.get(MessageField.TRACEPARENT, "")})
        started = time.monotonic()
        with self.tracer.start_as_current_span(
            f"invoke_agent {self.settings.agent}",
            context=context,
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": self.settings.agent,
                "kubeagents.task.id": task_id,
                "kubeagents.task.attempt": attempt,
            },
        ) as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            try:
                if not await self.store.begin(
                    message_id, task_id, worker=self.settings.pod_name, attempt=attempt
                ):
                    return  # already final: acknowledged, never run again
                try:
                    prompt = parse_input(message.get(MessageField.INPUT, ""))["prompt"]
                except ValueError as error:  # the input in the stream is unreadable
                    raise Permanent(f"invalid task input: {error}") from None
                headers: dict[str, str] = {}
                PROPAGATOR.inject(headers)
                run = message.get(MessageField.RUN, "")
                run_budget = message.get(MessageField.RUN_BUDGET, "")
                if run_budget:
                    headers[RUN_BUDGET_HEADER] = run_budget
                cancelled = self._cancel_mark(run) if run else None
                async with asyncio.timeout(self.settings.task_timeout_seconds):
                    outcome = await self.agent_loop.run(task_id, prompt, headers, cancelled)
            except asyncio.CancelledError:
                raise  # shutdown: the message stays pending and is reclaimed
            except (RedisError, OSError) as error:
                log.warning("task %s: Redis failed, left for reclaim: %s", task_id, error)
                span.set_status(Status(StatusCode.ERROR, str(error)))
                return  # not acknowledged: reclaimed after the visibility timeout
            except Exception as error:  # noqa: BLE001 - every other failure is classified
                await self._fail(message_id, message, classify(error), span, trace_id)
                return
            finally:
                self.metrics.task_duration.observe(time.monotonic() - started)
            conversation = outcome.conversation
            output_json = outcome.output_json
            result = {
                "status": "succeeded",
                "output": outcome.output,
                "output_json": "" if output_json is None else json.dumps(output_json),
                "stop_reason": outcome.stop_reason,
                "usage": conversation.usage,
                "turns": conversation.turns,
                "tool_calls": conversation.tool_calls,
                "attempts": attempt,
                "error": "",
                "worker": self.settings.pod_name,
                "trace_id": trace_id,
            }
            span.set_attribute("gen_ai.usage.input_tokens", conversation.usage["input_tokens"])
            span.set_attribute("gen_ai.usage.output_tokens", conversation.usage["output_tokens"])
            if await self.store.finish(message_id, task_id, result):
                self.metrics.tasks.labels("succeeded").inc()
                self._log(task_id, trace_id, "succeeded", attempt, started)

    def _cancel_mark(self, run: str) -> Callable[[], Awaitable[bool]]:
        key = self.keys.cancelled(run)

        async def cancelled() -> bool:
            return bool(await self.link.execute("EXISTS", key))

        return cancelled

    async def _fail(
        self,
        message_id: str,
        message: dict[str, str],
        failure: TaskFailure,
        span: trace.Span,
        trace_id: str,
    ) -> None:
        task_id = message.get(MessageField.ID, "")
        attempt = int(message.get(MessageField.ATTEMPT, "1") or 1)
        span.set_status(Status(StatusCode.ERROR, failure.message))
        span.set_attribute("error.type", "retryable" if failure.retryable else "permanent")
        if not failure.retryable:
            result = {
                "status": "failed",
                "error": failure.message,
                "attempts": attempt,
                "worker": self.settings.pod_name,
                "trace_id": trace_id,
            }
            if await self.store.finish(message_id, task_id, result):
                self.metrics.tasks.labels("failed").inc()
                self._log(task_id, trace_id, "failed", attempt, None, failure.message)
            return
        if attempt >= self.settings.max_attempts:
            if await self.store.bury(
                message_id, task_id, message=message, error=failure.message, attempts=attempt
            ):
                self.metrics.tasks.labels("dead").inc()
                self.metrics.dead_letters.inc()
                self._log(task_id, trace_id, "dead", attempt, None, failure.message)
            return
        delay = self._delay(attempt, failure)
        next_message = {**message, MessageField.ATTEMPT: str(attempt + 1)}
        if await self.store.retry(
            message_id,
            task_id,
            next_message=next_message,
            delay_ms=int(delay * 1000),
            error=failure.message,
            attempts=attempt,
        ):
            self.metrics.tasks.labels("retried").inc()
            self.metrics.retries.inc()
            self._log(task_id, trace_id, "retrying", attempt, None, failure.message, delay)

    def _delay(self, attempt: int, failure: TaskFailure) -> float:
        if failure.retry_after is not None:
            return failure.retry_after  # the proxy knows when the budget frees up
        return self.backoff.delay(attempt - 1)

    # --- readiness gate ----------------------------------------------------------------------

    async def _gate(self) -> bool:
        """Whether the probe says Ready (asked at most every `readiness_poll_seconds`)."""
        url = self.settings.readiness_url
        if url is None:
            self.ready = True
        elif time.monotonic() - self._ready_checked >= self.settings.readiness_poll_seconds:
            self._ready_checked = time.monotonic()
            assert self._http is not None
            try:
                async with self._http.get(url) as response:
                    self.ready = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                self.ready = False
        self.metrics.ready_gate.set(1 if self.ready else 0)
        return self.ready

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stopping.wait()

    def _log(
        self,
        task_id: str,
        trace_id: str,
        outcome: str,
        attempt: int,
        started: float | None,
        error: str = "",
        retry_in: float | None = None,
    ) -> None:
        record: Mapping[str, Any] = {
            "agent": self.settings.agent,
            "task_id": task_id,
            "trace_id": trace_id,
            "outcome": outcome,
            "attempt": attempt,
            **({"duration_ms": round((time.monotonic() - started) * 1000, 1)} if started else {}),
            **({"error": error} if error else {}),
            **({"retry_in_seconds": round(retry_in, 3)} if retry_in is not None else {}),
        }
        log_event(log, "task", record)
