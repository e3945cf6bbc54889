"""`Probe`: runs the checks on their schedules and answers "is this pod ready?" from memory.

Two loops, neither driven by the kubelet (polling `/readyz` never triggers a check):

- the **path checks**, every `path_interval_seconds` in each pod, free of token cost: `proxy`
  (the proxy's `/readyz`), `key` (`count_tokens` through the proxy: the provider accepts the
  key), `budget` (the proxy's budget endpoint: nothing exhausted), `mcp` (the runtime reports
  every MCP server up on its `/status`; see runtime_status);
- the **semantic check**, once per `interval_seconds`: the validator call through the proxy,
  judged by the expectation. Shared (default): once per interval per agent, by whichever pod
  claims it in Redis; every pod adopts the published verdict (see shared_verdict). Not shared:
  each pod on its own schedule.

Every schedule is spread by ± `jitter_ratio`. Ready = every check passes (after hysteresis,
see verdicts) and the semantic verdict is younger than its TTL.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from kubeagents_probe.errors import CheckFailed
from kubeagents_probe.expectations import Expectation, excerpt
from kubeagents_probe.metrics import ProbeMetrics
from kubeagents_probe.proxy_client import ProxyClient
from kubeagents_probe.runtime_status import RuntimeStatus
from kubeagents_probe.settings import ProbeSettings
from kubeagents_probe.shared_verdict import SharedVerdict, Verdict
from kubeagents_probe.verdicts import CheckResult, CheckState, Thresholds

log = logging.getLogger("kubeagents.probe")
SEMANTIC = "semantic"


@dataclass(frozen=True)
class Failing:
    check: str
    reason: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"check": self.check, "reason": self.reason, "detail": self.detail}


class Probe:
    def __init__(
        self,
        settings: ProbeSettings,
        client: ProxyClient,
        metrics: ProbeMetrics,
        shared: SharedVerdict | None,
        runtime: RuntimeStatus | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.shared = shared
        self.thresholds = Thresholds(settings.failure_threshold, settings.success_threshold)
        self.expectation = Expectation(settings, client.ask)
        self.started = time.monotonic()
        self.path_checks: dict[str, Callable[[], Awaitable[None]]] = {"proxy": client.proxy_ready}
        if settings.check_key:
            self.path_checks["key"] = self._check_key
        if settings.check_budget:
            self.path_checks["budget"] = self._check_budget
        if runtime is not None:
            self.path_checks["mcp"] = runtime.check_mcp
        self.states: dict[str, CheckState] = {
            name: CheckState() for name in (SEMANTIC, *self.path_checks)
        }
        self.history: deque[CheckResult] = deque(maxlen=settings.history)
        self._verdict_seq = -1
        self._verdict_age_ms = 0.0  # the verdict's age when it was read ...
        self._verdict_read_at = time.monotonic()  # ... and when that was (monotonic)
        self._verdict_error = ""
        for name in self.states:
            self._export(name)

    # --- the loops ---------------------------------------------------------------------------

    async def run(self) -> None:
        await asyncio.gather(self._path_loop(), self._semantic_loop())

    async def _path_loop(self) -> None:
        while True:
            await asyncio.gather(*(self._run_path_check(name) for name in self.path_checks))
            await asyncio.sleep(self._jittered(self.settings.path_interval_seconds))

    async def _semantic_loop(self) -> None:
        if self.shared is None:
            while True:
                self._record(await self._semantic_once())
                self._verdict_age_ms, self._verdict_read_at = 0.0, time.monotonic()
                await asyncio.sleep(self._jittered(self.settings.interval_seconds))
        while True:
            try:
                await self._shared_round(self.shared)
                self._verdict_error = ""
            except RedisError as error:  # the verdict ages; past its TTL the pod is NotReady
                self._verdict_error = f"shared verdict unavailable: {error}"
                log.warning("%s", self._verdict_error)
            await asyncio.sleep(self._jittered(self.settings.verdict_poll_seconds))

    async def _shared_round(self, shared: SharedVerdict) -> None:
        verdict, now_ms = await shared.read()
        if verdict is not None:
            self._adopt(verdict, now_ms)
        interval_ms = int(self.settings.interval_seconds * 1000)
        due = verdict is None or now_ms - verdict.at_ms >= interval_ms
        if not due or not await shared.claim(self.settings.pod_name, ttl_ms=interval_ms):
            return
        result = await self._semantic_once()
        self._observe(result)
        previous = verdict.state if verdict is not None else CheckState()
        published = await shared.publish(
            after_seq=verdict.seq if verdict is not None else 0,
            by=self.settings.pod_name,
            state=previous.record(result, self.thresholds),
            keep_ms=int(self.settings.verdict_ttl * 2000),
        )
        if published is not None:
            self._adopt(published, published.at_ms)

    def _adopt(self, verdict: Verdict, now_ms: int) -> None:
        self._verdict_age_ms = max(0.0, float(now_ms - verdict.at_ms))
        self._verdict_read_at = time.monotonic()
        if verdict.seq == self._verdict_seq:
            return
        self._verdict_seq = verdict.seq
        self.states[SEMANTIC] = verdict.state
        if verdict.state.last is not None and verdict.state.last.by != self.settings.pod_name:
            self.history.append(verdict.state.last)
        self._export(SEMANTIC)

    # --- the semantic check ------------------------------------------------------------------

    async def _semantic_once(self) -> CheckResult:
        settings = self.settings
        started = time.monotonic()
        tokens = 0
        reply_text = ""
        reason = detail = ""
        try:
            async with asyncio.timeout(settings.timeout_seconds):
                reply = await self.client.ask(
                    model=settings.model,
                    system=settings.system_prompt,
                    prompt=settings.prompt,
                    max_tokens=settings.max_tokens,
                )
                tokens, reply_text = reply.tokens, reply.text
                self._count_call("semantic", "ok", reply.input_tokens, reply.output_tokens)
                judgement = await self.expectation.judge(reply.text)
                grader = judgement.grader
                if grader is not None:
                    tokens += grader.tokens
                    self._count_call("judge", "ok", grader.input_tokens, grader.output_tokens)
                elif judgement.reason == "judge_unavailable":
                    self._count_call("judge", "failed", 0, 0)
                if not judgement.passed:
                    reason, detail = judgement.reason, judgement.detail
        except CheckFailed as failed:
            reason, detail = failed.reason, failed.detail
            if not reply_text:
                self._count_call("semantic", failed.reason, 0, 0)
        except TimeoutError:
            reason = "timeout"
            detail = f"no verdict within {settings.timeout_seconds:g}s"
        return self._result(
            SEMANTIC, started, reason, detail, tokens=tokens, excerpt=excerpt(reply_text)
        )

    def _count_call(self, kind: str, outcome: str, input_tokens: int, output_tokens: int) -> None:
        self.metrics.model_calls.labels(kind, outcome).inc()
        if input_tokens:
            self.metrics.tokens.labels("input").inc(input_tokens)
        if output_tokens:
            self.metrics.tokens.labels("output").inc(output_tokens)

    # --- the path checks ---------------------------------------------------------------------

    async def _run_path_check(self, name: str) -> None:
        started = time.monotonic()
        reason = detail = ""
        try:
            async with asyncio.timeout(self.settings.timeout_seconds):
                await self.path_checks[name]()
        except CheckFailed as failed:
            reason, detail = failed.reason, failed.detail
        except TimeoutError:
            reason, detail = "timeout", f"no answer within {self.settings.timeout_seconds:g}s"
        self._record(self._result(name, started, reason, detail))

    async def _check_key(self) -> None:
        await self.client.count_tokens(self.settings.model)

    async def _check_budget(self) -> None:
        budget = await self.client.budget()
        if not budget.get("budgets"):
            return
        for scope in budget.get("scopes") or []:
            for kind in ("tokens", "usd"):
                state: dict[str, Any] = scope.get(kind) or {}
                limit, remaining = state.get("limit"), state.get("remaining")
                if limit is None or remaining is None or remaining > 0:
                    continue
                raise CheckFailed(
                    "budget_exhausted",
                    f"{kind} budget of agent {self.settings.agent} exhausted: used "
                    f"{state.get('used')} and reserved {state.get('reserved')} of {limit} in "
                    f"the last 24h; free again in {state.get('seconds_until_free')}s",
                )

    # --- state -------------------------------------------------------------------------------

    def _result(
        self, check: str, started: float, reason: str, detail: str, **extra: Any
    ) -> CheckResult:
        """The result of a run of `check` that began at `started` (monotonic); failed when
        `reason` is set."""
        return CheckResult(
            check=check,
            passed=not reason,
            at=time.time(),
            latency_ms=round((time.monotonic() - started) * 1000, 1),
            reason=reason,
            detail=detail,
            by=self.settings.pod_name,
            **extra,
        )

    def _observe(self, result: CheckResult) -> None:
        self.history.append(result)
        self.metrics.check_duration.labels(result.check).observe(result.latency_ms / 1000)

    def _record(self, result: CheckResult) -> None:
        self._observe(result)
        self.states[result.check] = self.states[result.check].record(result, self.thresholds)
        self._export(result.check)

    def _export(self, name: str) -> None:
        state = self.states[name]
        self.metrics.check_success.labels(name).set(1 if state.passing else 0)
        self.metrics.consecutive_failures.labels(name).set(state.consecutive_failures)
        self.metrics.ready.set(1 if not self.failing() else 0)

    def verdict_age_seconds(self) -> float:
        return (self._verdict_age_ms / 1000) + (time.monotonic() - self._verdict_read_at)

    def failing(self) -> list[Failing]:
        """Every check that keeps the pod NotReady, with its reason (empty: ready)."""
        in_grace = time.monotonic() - self.started < self.settings.startup_grace_seconds
        failing = []
        for name, state in self.states.items():
            if state.passing:
                if name == SEMANTIC and self.verdict_age_seconds() > self.settings.verdict_ttl:
                    detail = (
                        f"the last verdict is {self.verdict_age_seconds():.0f}s old "
                        f"(TTL {self.settings.verdict_ttl:g}s)"
                    )
                    if self._verdict_error:
                        detail += f"; {self._verdict_error}"
                    failing.append(Failing(name, "verdict_stale", detail))
                continue
            if state.last is None:
                reason = "starting" if in_grace else "no_result"
                detail = self._verdict_error if name == SEMANTIC else ""
                failing.append(Failing(name, reason, detail or "no result yet"))
            else:
                failing.append(Failing(name, state.last.reason, state.last.detail))
        return failing

    def readiness(self) -> dict[str, Any]:
        failing = self.failing()
        self.metrics.ready.set(0 if failing else 1)
        self.metrics.verdict_age.set(self.verdict_age_seconds())
        checks = {}
        for name, state in self.states.items():
            entry: dict[str, Any] = {
                "passing": bool(state.passing),
                "consecutive_failures": state.consecutive_failures,
                "consecutive_successes": state.consecutive_successes,
            }
            if name == SEMANTIC:
                entry["age_seconds"] = round(self.verdict_age_seconds(), 1)
                entry["by"] = state.last.by if state.last is not None else None
            checks[name] = entry
        return {
            "ready": not failing,
            "agent": self.settings.agent,
            "pod": self.settings.pod_name,
            "failing": [failure.to_json() for failure in failing],
            "checks": checks,
        }

    def _jittered(self, seconds: float) -> float:
        spread = self.settings.jitter_ratio
        return seconds * (1 + random.uniform(-spread, spread))  # noqa: S311 - not cryptography
