"""Benchmark of `kubeagents runtime`: tasks per second through one runtime, and its idle memory.

    .venv/bin/python tests/benchmarks/bench_runtime.py [--concurrency 16] [--tasks N]
        [--tool-tasks N] [--unpinned] [--py-spy PATH] [--keep]

Starts everything itself on loopback, the pod's path: the fake Anthropic API answering at once
(`--max-recorded 0`), a real redis-server, `kubeagents proxy` with budgets on in front of the
fake (`max_concurrent_calls` 512 as in bench_proxy, so the proxy's cap is not what is measured;
the pod's default of 8 gave the same figures in a spot check), a real MCP tool server over HTTP,
and one `kubeagents runtime` per workload whose readiness gate (`readiness_url`, the probe's
`/readyz` in a pod) is a tiny HTTP server of this script.
Then, for each workload:

1. the agent's stream is pre-filled with N tasks through `TaskQueue.submit`, before the runtime
   starts; the runtime starts with its gate closed (503), so it pulls nothing;
2. 2 s after its listening line, its idle RSS (VmRSS) is read (before any task);
3. the gate opens (200); drain time = from the gate's first 200 to the last task's
   `finished_at` (Redis clock); the script polls `XINFO GROUPS` (lag, pending) and the delayed
   set until the queue is empty, then reads every result once (pipelined `HMGET`) and checks it.

Workloads, each task a real tool-use loop of the runtime:

- no tools: the runtime has no MCP server; every task is one model call answering text
  (`set_default(Reply.with_text("done"))`);
- one tool call: the runtime has the MCP server; every task is turn 1 = the model calls `add`
  {a:1, b:2} (a real MCP call), turn 2 = the model answers text "3".

  The fake answers every request from one FIFO script and cannot match a request (it cannot see
  whether the last message is a tool_result), so with 16 concurrent tasks a scripted sequence of
  (tool_use, text) pairs would be consumed in arrival order: some tasks would get 0 tool calls
  and others 2. Instead every request gets the same default reply, `[text "3", tool_use add]`
  with `input_tokens` fixed at 100 (5 output tokens), and the runtime's `max_task_tokens` is set
  to 106. Turn 1 has `max_tokens` 106, so the whole reply comes back (`stop_reason: tool_use`)
  and the runtime calls `add`; turn 2 has `max_tokens` = 106 - 105 = 1, so the fake truncates
  the reply after the text block, as the real API does (`stop_reason: max_tokens`, text "3"),
  and the loop ends. Every task therefore makes exactly 2 model calls and 1 tool call, in any
  order of arrival, and ends with output "3"; the check at the end verifies that for each task
  (`turns` = 2, `tool_calls` = 1). The only difference from a natural run is the final
  stop_reason (`max_tokens` instead of `end_turn`), which the runtime handles the same way.

Baseline in the same run: model calls per second through the same proxy from one process using
the same SDK as the runtime (`anthropic.AsyncAnthropic`, default httpx transport, uvloop), with
as many concurrent callers as the runtime has task slots, each sending the runtime's first
request (same model, max_tokens, system prompt and prompt), closed loop, on the runtime's CPU.
A task of the first workload is that call plus the queue's work (read, begin, checkpoint,
finish/ack), so tasks/s / calls/s is the share of the SDK's own ceiling the runtime reaches (a
tool task makes two model calls: its ratio uses 2 x tasks/s). The steadier comparison is CPU:
the runtime's CPU per task against the SDK process's CPU per call. For reference the baseline
is run again with the SDK's aiohttp transport (`DefaultAioHttpClient`, vendored in the SDK), an
option the runtime does not use today.

CPU layout (default): the process under test alone on CPU 0 (the runtime, or the baseline's SDK
process); the fake, redis-server, the proxy, the MCP server and this script on CPU 1, as in
bench_proxy. The figures are then "one runtime on one core": the runtime is the bottleneck
(its core ~90 % busy, CPU 1 ~70-80 %), and its CPU per task is lower and steadier than
unpinned (measured while choosing: 2.0-2.3 ms per task pinned, 2.6 ms unpinned, where it
shares both cores with the proxy, the fake and redis). `--unpinned` leaves every process to the
scheduler, for comparison. `--py-spy PATH` records the runtime with py-spy during each drain
(`--gil`: only the thread running Python; 8 s at 100 Hz, pausing the runtime for each sample)
and prints its top frames; such a run's throughput is slightly pessimistic.

Ends with one line:

    bench-runtime: tasks_per_s=.. tasks_per_s_with_tool=.. rss_mb=..

(rss_mb: the runtime configured with one HTTP MCP server, which loads the MCP SDK as in a pod.)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis

TESTS_DIR = Path(__file__).resolve().parent.parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from benchmarks.bench_proxy import (  # noqa: E402
    Meter,
    check_idle,
    cpu_seconds,
    pin,
    rss_mib,
    run_benchmark,
    say,
    start_fake,
)
from harness.mcp_servers import start_mcp_server  # noqa: E402
from harness.processes import HarnessError, ManagedProcess  # noqa: E402
from harness.proxy import start_proxy  # noqa: E402
from harness.redis_servers import start_redis  # noqa: E402
from harness.runtime import AGENT_MODEL, RuntimeProcess, start_runtime  # noqa: E402
from kubeagents.fake_anthropic import FakeAnthropicControl, Reply  # noqa: E402
from kubeagents.redis_link import RedisLink  # noqa: E402
from kubeagents.tasks import QueueKeys, TaskQueue  # noqa: E402

RUNTIME_CPU = 0  # the process under test, alone
REST_CPU = 1  # fake, redis-server, proxy, MCP server, this script

NAMESPACE = "tests"  # start_runtime's namespace
SYSTEM_PROMPT = "You are a careful research agent."  # what start_runtime writes (stripped)
PROMPT = "Add 1 and 2."
MAX_TOKENS = 4096  # the runtime's default max_tokens
BUDGET_TOKENS_PER_DAY = 1_000_000_000_000
PROXY_MAX_CONCURRENT_CALLS = 512  # the pod's default is 8; not what this benchmark measures
TOOL_INPUT_TOKENS = 100  # fixed input tokens of every tool-workload reply
TOOL_REPLY_OUTPUT_TOKENS = 5  # text "3" (1) + tool_use add {"a":1,"b":2} (4)
TOOL_MAX_TASK_TOKENS = TOOL_INPUT_TOKENS + TOOL_REPLY_OUTPUT_TOKENS + 1  # turn 2 gets max_tokens 1
RSS_SETTLE_SECONDS = 2.0
SUBMIT_BATCH = 500
POLL_SECONDS = 0.05
REPORT_EVERY_SECONDS = 5.0
STALL_SECONDS = 30.0
VERIFY_BATCH = 1000
PROFILE_SECONDS = 8

TARGETS = {  # report, don't assert
    "tasks_per_s": (">=", 500.0),
}


# --- the readiness gate ----------------------------------------------------------------------


class Gate:
    """The runtime's readiness gate (`readiness_url`): 503 until opened, then 200. Remembers
    when it first answered 200 after opening (wall clock), the start of the drain."""

    def __init__(self) -> None:
        self.is_open = False
        self.opened_at: float | None = None
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status = 200 if gate.is_open else 503
                if status == 200 and gate.opened_at is None:
                    gate.opened_at = time.time()
                body = b'{"ready":%s}' % (b"true" if status == 200 else b"false")
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/readyz"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close_gate(self) -> None:
        self.is_open = False
        self.opened_at = None

    def open_gate(self) -> None:
        self.is_open = True

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the queue -------------------------------------------------------------------------------


async def _prefill(redis_url: str, agent: str, task_ids: Sequence[str]) -> None:
    link = RedisLink(redis_url)
    queue = TaskQueue(link, namespace=NAMESPACE, agent=agent)
    try:
        for start in range(0, len(task_ids), SUBMIT_BATCH):
            batch = task_ids[start : start + SUBMIT_BATCH]
            submitted = await asyncio.gather(
                *(queue.submit({"prompt": PROMPT}, task_id=task_id) for task_id in batch)
            )
            if not all(each.created for each in submitted):
                raise HarnessError(f"task ids of agent {agent} existed already")
    finally:
        await link.aclose()


def prefill(redis_url: str, agent: str, count: int) -> list[str]:
    """Queue `count` tasks for `agent` (TaskQueue.submit, pipelined); their ids."""
    task_ids = [f"bench-{agent}-{index:07d}" for index in range(count)]
    started = time.perf_counter()
    asyncio.run(_prefill(redis_url, agent, task_ids))
    elapsed = time.perf_counter() - started
    say(f"  queued {count:,} tasks in {elapsed:.2f} s ({count / elapsed:,.0f}/s, TaskQueue.submit)")
    return task_ids


def group_info(client: Any, stream: str) -> dict[str, Any]:
    for group in client.xinfo_groups(stream):
        if group["name"] == "runtime":
            return dict(group)
    raise HarnessError(f"no consumer group 'runtime' on {stream}")


def wait_drained(client: Any, keys: QueueKeys, count: int, runtime: RuntimeProcess) -> None:
    """Poll XINFO GROUPS (lag, pending) and the delayed set until every task was read and none is
    pending or waiting for a retry; print progress; fail on a stall or a dead runtime."""
    last_read, last_change = -1, time.monotonic()
    next_report = time.monotonic() + REPORT_EVERY_SECONDS
    while True:
        info = group_info(client, keys.stream)
        read, lag, pending = info["entries-read"] or 0, info["lag"], info["pending"]
        delayed = client.zcard(keys.delayed)
        if read >= count and lag == 0 and pending == 0 and delayed == 0:
            return
        now = time.monotonic()
        if not runtime.process.alive():
            raise HarnessError(runtime.process.failure_message("exited during the drain"))
        if read != last_read:
            last_read, last_change = read, now
        elif now - last_change > STALL_SECONDS:
            raise HarnessError(
                runtime.process.failure_message(
                    f"no task read for {STALL_SECONDS:g} s ({read:,} of {count:,} read, "
                    f"{pending} pending, {delayed} delayed)"
                )
            )
        if now >= next_report:
            next_report = now + REPORT_EVERY_SECONDS
            say(f"    … {read:,} of {count:,} read, {pending} pending, {delayed} retrying")
        time.sleep(POLL_SECONDS)


@dataclass
class Check:
    """What the results of one workload hold."""

    succeeded: int
    problems: list[str]  # one line per task that is not as expected (first few kept)
    bad: int
    first_started_ms: int
    last_finished_ms: int
    turns: int
    tool_calls: int


def verify(
    client: Any,
    keys: QueueKeys,
    task_ids: Sequence[str],
    *,
    turns: int,
    tool_calls: int,
    output: str,
) -> Check:
    """Read every result once (pipelined HMGET) and check status, turns, tool calls, output."""
    fields = ("status", "turns", "tool_calls", "output", "started_at", "finished_at", "error")
    check = Check(0, [], 0, 2**62, 0, 0, 0)
    for start in range(0, len(task_ids), VERIFY_BATCH):
        batch = task_ids[start : start + VERIFY_BATCH]
        pipe = client.pipeline(transaction=False)
        for task_id in batch:
            pipe.hmget(keys.result(task_id), fields)
        for task_id, values in zip(batch, pipe.execute(), strict=True):
            row = dict(zip(fields, values, strict=True))
            check.turns += int(row["turns"] or 0)
            check.tool_calls += int(row["tool_calls"] or 0)
            if row["started_at"]:
                check.first_started_ms = min(check.first_started_ms, int(row["started_at"]))
            if row["finished_at"]:
                check.last_finished_ms = max(check.last_finished_ms, int(row["finished_at"]))
            expected = (
                row["status"] == "succeeded"
                and int(row["turns"] or 0) == turns
                and int(row["tool_calls"] or 0) == tool_calls
                and row["output"] == output
            )
            if row["status"] == "succeeded":
                check.succeeded += 1
            if not expected:
                check.bad += 1
                if len(check.problems) < 5:
                    check.problems.append(
                        f"{task_id}: status={row['status']} turns={row['turns']} "
                        f"tool_calls={row['tool_calls']} output={row['output']!r} "
                        f"error={row['error']!r}"
                    )
    return check


# --- the baseline: model calls/s through the proxy with the runtime's SDK -----------------


async def _sdk_load(
    url: str, concurrency: int, warmup: float, seconds: float, *, aiohttp: bool
) -> dict[str, Any]:
    import anthropic  # only the baseline's own process needs it

    client = anthropic.AsyncAnthropic(
        base_url=url,
        api_key="kubeagents-runtime",
        max_retries=0,
        timeout=30.0,
        http_client=anthropic.DefaultAioHttpClient() if aiohttp else None,
    )
    counting, stopping = False, False
    calls, errors = 0, 0
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": PROMPT}]

    async def caller() -> None:
        nonlocal calls, errors
        while not stopping:
            try:
                await client.messages.create(
                    model=AGENT_MODEL,
                    max_tokens=MAX_TOKENS,
                    system=SYSTEM_PROMPT,
                    messages=messages,
                )
            except anthropic.APIError:
                errors += counting
            else:
                calls += counting

    callers = [asyncio.create_task(caller()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    counting = True
    sys.stdout.write("start\n")
    sys.stdout.flush()
    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    counting = False
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    sys.stdout.write("stop\n")
    sys.stdout.flush()
    stopping = True
    await asyncio.gather(*callers)
    await client.close()
    return {"calls": calls, "errors": errors, "seconds": elapsed, "cpu_seconds": cpu}


def sdk_client_main(args: argparse.Namespace) -> int:
    """The baseline's process: run the SDK load and print its figures as one JSON line."""
    from kubeagents.process import loop_factory  # uvloop, as the runtime

    if args.sdk_cpu >= 0:
        os.sched_setaffinity(0, {args.sdk_cpu})
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        result = runner.run(
            _sdk_load(
                args.sdk_client,
                args.concurrency,
                args.sdk_warmup,
                args.sdk_seconds,
                aiohttp=args.sdk_aiohttp,
            )
        )
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


@dataclass
class Baseline:
    calls_per_s: float
    client_cpu_us: float  # the SDK process's CPU per call


def sdk_baseline(
    proxy_url: str,
    args: argparse.Namespace,
    watch: Mapping[str, Callable[[], float]],
    workdir: Path,
    *,
    aiohttp: bool = False,
) -> Baseline:
    """Model calls/s through the proxy from one SDK process with `concurrency` callers."""
    argv = [
        sys.executable, __file__, "--sdk-client", proxy_url,
        "--concurrency", str(args.concurrency),
        "--sdk-seconds", str(args.baseline_seconds), "--sdk-warmup", "1",
        "--sdk-cpu", str(-1 if args.unpinned else RUNTIME_CPU),
        *(["--sdk-aiohttp"] if aiohttp else []),
    ]  # fmt: skip
    name = "sdk-baseline-aiohttp" if aiohttp else "sdk-baseline"
    client = ManagedProcess(name, argv, workdir / f"{name}.log")  # Meter counts it as ours
    client.wait_for_log(r"^start$", timeout=60)  # "start" and "stop" frame the measured window
    meter = Meter(watch)
    client.wait_for_log(r"^stop$", timeout=args.baseline_seconds + 30)
    usage = meter.stop()
    try:
        client.popen.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise HarnessError(client.failure_message("did not exit after its run")) from None
    found = re.search(r"^\{.*\}$", client.log_text(), re.MULTILINE)
    if client.popen.returncode != 0 or found is None:
        raise HarnessError(client.failure_message(f"exited with {client.popen.returncode}"))
    client.stop()  # forget it (it has exited)
    result = json.loads(found.group(0))
    calls = max(1, result["calls"])
    rate = result["calls"] / result["seconds"]
    client_cpu = result["cpu_seconds"] / calls * 1e6
    say(
        f"  {rate:,.0f} calls/s ({result['calls']:,} calls in {result['seconds']:.1f} s, "
        f"{result['errors']} errors); SDK process CPU {client_cpu:,.0f} µs per call"
    )
    per_call = ", ".join(f"{proc} {used / calls * 1e6:,.0f} µs" for proc, used in usage.cpu.items())
    say(f"  CPU per call: {per_call}")
    say(f"  {usage.describe()}")
    if result["errors"]:
        say(f"  WARNING: {result['errors']} failed calls in the baseline")
    return Baseline(rate, client_cpu)


# --- py-spy ------------------------------------------------------------------------------------


def start_profile(py_spy: str, pid: int, output: Path) -> subprocess.Popen[bytes]:
    argv = [
        py_spy, "record", "--pid", str(pid), "--duration", str(PROFILE_SECONDS),
        "--format", "raw", "--gil", "--nolineno", "--output", str(output),
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def _package(frame: str) -> str:
    """The package (or stdlib module) of a py-spy frame `func (pkg/mod.py)`."""
    where = frame.rpartition(" (")[2].rstrip(")")
    return where.split("/")[0].removesuffix(".py") or "?"


def summarise_profile(path: Path, top: int = 15) -> None:
    """Print the top self and inclusive frames of a py-spy raw (collapsed stacks) file."""
    if not path.exists():
        say(f"  py-spy wrote nothing to {path}")
        return
    own: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")  # root first
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        packages[_package(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        say("  py-spy recorded no sample")
        return
    say(
        f"  py-spy --gil: {total:,} samples holding the GIL in {PROFILE_SECONDS} s at 100 Hz "
        f"({total / (PROFILE_SECONDS * 100):.0%} of the time); raw: {path}"
    )
    say(
        "  self time by package: "
        + ", ".join(f"{name} {count / total:.0%}" for name, count in packages.most_common(12))
    )
    say("  top self frames:")
    for frame, count in own.most_common(top):
        say(f"    {count / total:6.1%}  {frame}")
    say("  top inclusive frames (without the ones in every sample: main, event loop):")
    shown = [item for item in inclusive.most_common() if item[1] < 0.98 * total]
    for frame, count in shown[: top + 10]:
        say(f"    {count / total:6.1%}  {frame}")


# --- one workload ----------------------------------------------------------------------------


@dataclass
class Drain:
    tasks_per_s: float
    rss_mb: float
    runtime_cpu_us: float  # the runtime's CPU per task


def run_workload(
    *,
    label: str,
    agent: str,
    count: int,
    settings: Mapping[str, Any],
    expect: Mapping[str, Any],
    workdir: Path,
    args: argparse.Namespace,
    env: Mapping[str, Any],
) -> Drain:
    redis_url: str = env["redis_url"]
    client = env["redis_client"]
    gate: Gate = env["gate"]
    keys = QueueKeys.of(NAMESPACE, agent)
    say()
    say(f"workload: {label}; {count:,} tasks, max_concurrent_tasks {args.concurrency}")
    task_ids = prefill(redis_url, agent, count)
    gate.close_gate()
    runtime = start_runtime(
        workdir / agent,
        proxy_url=env["proxy_url"],
        redis_url=redis_url,
        settings={
            "agent": agent,
            "max_concurrent_tasks": args.concurrency,
            "readiness_url": gate.url,
            **settings,
        },
        name=f"runtime-{agent}",
    )
    pid = runtime.process.pid
    if not args.unpinned:
        pin(pid, RUNTIME_CPU)
    time.sleep(RSS_SETTLE_SECONDS)
    rss = rss_mib(pid)
    say(
        f"  runtime idle RSS {RSS_SETTLE_SECONDS:g} s after its listening line, gate closed: "
        f"{rss:.1f} MB (anonymous {rss_mib(pid, field='RssAnon'):.1f}, files "
        f"{rss_mib(pid, field='RssFile'):.1f})"
    )
    status, ready = runtime.request("GET", "/readyz")
    servers = ready.get("mcp_servers", {})
    if status != 200 or not all(server["up"] for server in servers.values()):
        raise HarnessError(f"the runtime is not ready to work: {status} {ready}")
    if group_info(client, keys.stream)["entries-read"]:
        raise HarnessError("the runtime read tasks while its gate was closed")

    watch: dict[str, Callable[[], float]] = {
        "runtime": lambda: cpu_seconds(pid),
        **env["watch"],
    }
    profile: subprocess.Popen[bytes] | None = None
    profile_path = workdir / f"py-spy-{agent}.txt"
    if args.py_spy:
        profile = start_profile(args.py_spy, pid, profile_path)
        time.sleep(0.5)  # let py-spy attach before the work starts
    meter = Meter(watch)
    gate.open_gate()
    wait_drained(client, keys, count, runtime)
    usage = meter.stop()
    if gate.opened_at is None:
        raise HarnessError("the runtime never asked its gate")
    check = verify(client, keys, task_ids, **expect)
    seconds = check.last_finished_ms / 1000 - gate.opened_at
    tasks_per_s = count / seconds
    say(
        f"  drained in {seconds:.2f} s: {tasks_per_s:,.0f} tasks/s (gate's first 200 -> last "
        f"finished_at; first task started {check.first_started_ms / 1000 - gate.opened_at:+.3f} s)"
    )
    per_task = ", ".join(f"{name} {used / count * 1e6:,.0f} µs" for name, used in usage.cpu.items())
    say(f"  CPU per task: {per_task}")
    say(f"  {usage.describe()}")
    say(
        f"  results: {check.succeeded:,} of {count:,} succeeded; {check.turns:,} model calls, "
        f"{check.tool_calls:,} tool calls in all; {check.bad} not as expected "
        f"(expected per task: turns={expect['turns']} tool_calls={expect['tool_calls']} "
        f"output={expect['output']!r})"
    )
    for problem in check.problems:
        say(f"    {problem}")
    say(
        f"  runtime RSS after the drain {rss_mib(pid):.1f} MB "
        f"(peak {rss_mib(pid, field='VmHWM'):.1f} MB)"
    )
    if profile is not None:
        try:
            profile.wait(timeout=PROFILE_SECONDS + 30)
        except subprocess.TimeoutExpired:
            profile.kill()
            profile.wait()
        if seconds < PROFILE_SECONDS:
            say(f"  NOTE: the drain took {seconds:.1f} s, shorter than the profile")
        summarise_profile(profile_path)
    runtime.stop()
    return Drain(tasks_per_s, rss, usage.cpu["runtime"] / count * 1e6)


# --- the benchmark ---------------------------------------------------------------------------


def benchmark(args: argparse.Namespace, workdir: Path) -> str:
    if shutil.which("redis-server") is None:
        raise HarnessError("redis-server not found on PATH (make bench-runtime installs it)")
    if not args.unpinned:
        if len(os.sched_getaffinity(0)) < 2:
            raise HarnessError("needs 2 CPUs (the runtime gets one to itself); or --unpinned")
        os.sched_setaffinity(0, {REST_CPU})  # every process started from here inherits it
    check_idle("bench-runtime")
    if args.unpinned:
        say("  CPU layout: unpinned (every process wherever the scheduler puts it)")
    else:
        say(
            f"  CPU layout: the runtime (or the baseline's SDK client) alone on CPU {RUNTIME_CPU};"
            f" fake, redis-server, proxy, MCP server and this script on CPU {REST_CPU}"
        )

    fake, fake_url = start_fake(workdir)
    control = FakeAnthropicControl(fake_url)
    control.set_default(Reply.with_text("done"))
    redis_server = start_redis(workdir / "redis")
    proxy = start_proxy(
        workdir / "proxy",
        upstream_url=fake_url,
        settings={
            "redis_url": redis_server.url,
            "budget_tokens_per_day": BUDGET_TOKENS_PER_DAY,
            "max_concurrent_calls": PROXY_MAX_CONCURRENT_CALLS,
        },
    )
    mcp = start_mcp_server(workdir / "mcp")
    gate = Gate()
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)  # decoded replies
    proxy_pid, fake_pid, redis_pid = proxy.process.pid, fake.pid, redis_server.process.pid
    mcp_pid = mcp.process.pid
    watch: dict[str, Callable[[], float]] = {
        "proxy": lambda: cpu_seconds(proxy_pid),
        "fake": lambda: cpu_seconds(fake_pid),
        "redis": lambda: cpu_seconds(redis_pid),
        "mcp-server": lambda: cpu_seconds(mcp_pid),
    }
    say(
        f"  proxy (budgets on, max_concurrent_calls {PROXY_MAX_CONCURRENT_CALLS}) -> fake "
        f"(no latency, --max-recorded 0); redis-server; MCP tool server over HTTP"
    )

    say()
    say(
        f"baseline: model calls/s through the proxy from one process with the runtime's SDK "
        f"(AsyncAnthropic, uvloop), {args.concurrency} concurrent callers, closed loop, "
        f"{args.baseline_seconds:g} s after 1 s warm-up"
        + ("" if args.unpinned else f", on CPU {RUNTIME_CPU}")
    )
    baseline = sdk_baseline(proxy.url, args, watch, workdir)
    say("  for reference, the same with the SDK's aiohttp transport (DefaultAioHttpClient):")
    aiohttp_baseline = sdk_baseline(proxy.url, args, watch, workdir, aiohttp=True)

    env: dict[str, Any] = {
        "redis_url": redis_server.url,
        "redis_client": client,
        "gate": gate,
        "proxy_url": proxy.url,
        "watch": watch,
    }
    plain = run_workload(
        label="no tools (one model call answering text per task; no MCP server)",
        agent="bench-plain",
        count=args.tasks,
        settings={},
        expect={"turns": 1, "tool_calls": 0, "output": "done"},
        workdir=workdir,
        args=args,
        env=env,
    )

    control.set_default(
        Reply.with_tool_use("add", {"a": 1, "b": 2}, text="3", input_tokens=TOOL_INPUT_TOKENS)
    )
    tool = run_workload(
        label="one tool call (turn 1 calls MCP tool add {a:1,b:2}, turn 2 answers '3')",
        agent="bench-tool",
        count=args.tool_tasks,
        settings={
            "mcp_servers": [{"name": "tools", "transport": "http", "url": mcp.url}],
            "max_task_tokens": TOOL_MAX_TASK_TOKENS,
        },
        expect={"turns": 2, "tool_calls": 1, "output": "3"},
        workdir=workdir,
        args=args,
        env=env,
    )
    control.close()
    client.close()
    gate.stop()

    say()
    say("summary (reported, not asserted)")
    op, bound = TARGETS["tasks_per_s"]
    met = plain.tasks_per_s >= bound
    calls_per_s, sdk_cpu = baseline.calls_per_s, baseline.client_cpu_us
    say(
        f"  no tools:      {plain.tasks_per_s:7,.0f} tasks/s  "
        f"{'ok' if met else 'MISSED'} (target {op} {bound:g}); "
        f"{plain.tasks_per_s / calls_per_s:.0%} of the SDK baseline's {calls_per_s:,.0f} calls/s"
    )
    say(
        f"                 runtime CPU {plain.runtime_cpu_us:,.0f} µs per task = "
        f"{plain.runtime_cpu_us / sdk_cpu:.2f} x the SDK's {sdk_cpu:,.0f} µs per call "
        f"({aiohttp_baseline.client_cpu_us:,.0f} µs with its aiohttp transport)"
    )
    say(
        f"  one tool call: {tool.tasks_per_s:7,.0f} tasks/s  ({2 * tool.tasks_per_s:,.0f} model "
        f"calls/s + {tool.tasks_per_s:,.0f} MCP calls/s); "
        f"{2 * tool.tasks_per_s / calls_per_s:.0%} of the baseline's calls/s"
    )
    say(
        f"                 runtime CPU {tool.runtime_cpu_us:,.0f} µs per task = "
        f"{tool.runtime_cpu_us / sdk_cpu:.2f} x the SDK's µs per call (2 calls + 1 MCP call)"
    )
    say(
        f"  runtime idle RSS: {tool.rss_mb:.1f} MB with one HTTP MCP server, "
        f"{plain.rss_mb:.1f} MB without"
    )
    say(f"  logs: {workdir}" + ("" if args.keep else " (removed; --keep keeps them)"))
    return (
        f"bench-runtime: tasks_per_s={plain.tasks_per_s:.0f} "
        f"tasks_per_s_with_tool={tool.tasks_per_s:.0f} rss_mb={tool.rss_mb:.1f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--concurrency", type=int, default=16, help="the runtime's max_concurrent_tasks (16)"
    )
    parser.add_argument("--tasks", type=int, default=5000, help="tasks without tools (5000)")
    parser.add_argument(
        "--tool-tasks", type=int, default=1500, help="tasks with one tool call (1500)"
    )
    parser.add_argument(
        "--baseline-seconds", type=float, default=8.0, help="seconds of each SDK baseline (8)"
    )
    parser.add_argument(
        "--unpinned", action="store_true", help="leave the processes to the scheduler"
    )
    parser.add_argument(
        "--py-spy", metavar="PATH", help="profile the runtime with this py-spy during each drain"
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs' folder on success")
    # the baseline's own process (this file started again by sdk_baseline)
    parser.add_argument("--sdk-client", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--sdk-seconds", type=float, default=5.0, help=argparse.SUPPRESS)
    parser.add_argument("--sdk-warmup", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--sdk-cpu", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("--sdk-aiohttp", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sdk_client:
        return sdk_client_main(args)
    keep = args.keep or bool(args.py_spy)  # the profiles are in the folder
    return run_benchmark("bench-runtime", lambda workdir: benchmark(args, workdir), keep=keep)


if __name__ == "__main__":
    sys.exit(main())
