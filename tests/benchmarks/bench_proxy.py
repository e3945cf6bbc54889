"""Benchmark of `kubeagents proxy` against the fake Anthropic API, and against LiteLLM's proxy.

    .venv/bin/python tests/benchmarks/bench_proxy.py [--skip-litellm] [--duration S]

Starts everything itself on loopback (the fake, redis-server, the proxy with budgets on,
LiteLLM in its own venv under the cache folder), measures, stops everything, and ends with one
line:

    bench-proxy: overhead_p50_ms=.. overhead_p99_ms=.. rps=.. litellm_rps=.. ratio=.. rss_mb=..
                 durable_p50_added_ms=.. durable_rps_ratio=..

What is measured, and how (README.md beside this file says more):

1. latency overhead at a fixed 500 req/s: `loadgen.py`, an open-loop paced generator, sends to
   the fake directly and through the proxy in interleaved phases (direct, proxy, proxy, direct,
   twice); overhead = proxy percentile - direct percentile. Measured twice: with the machine's
   idle policy (idle vCPUs halt), then with idle CPUs polling (`polling_idle`: PM QoS
   cpu_dma_latency held at 0, as tuned's latency-performance profile does); the targets are
   checked on the second, both are printed;
2. peak throughput: `wrk` (32 connections, closed loop; the median of 3 runs) against the proxy,
   then against the fake;
3. time to first byte of streams (`"stream": true`), proxy vs direct, like 1;
4. idle RSS (VmRSS) of the proxy and of the fake right after start-up, before any request;
5. the throughput load of 2 through LiteLLM's proxy (one worker, a budget configured);
6. the cost of durable reservations: a second proxy with `durable_replicas=1` (Redis WAIT for
   one replica after each reservation) against the same Redis with a replica attached, side by
   side with the first at 500 req/s (p50/p99 added) and at peak (throughput ratio).

The two cores are shared the same way in every throughput run: the server under test alone on
CPU 0; the load generator, the fake upstream and redis-server on CPU 1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
TESTS_DIR = BENCH_DIR.parent
REPO_DIR = TESTS_DIR.parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from harness.processes import HarnessError, ManagedProcess, free_port, wait_for  # noqa: E402
from harness.proxy import ProxyProcess, start_proxy  # noqa: E402
from harness.redis_servers import RedisServer, start_redis  # noqa: E402

KUBEAGENTS = Path(sys.executable).parent / "kubeagents"
LOADGEN = BENCH_DIR / "loadgen.py"
WRK_SCRIPT = BENCH_DIR / "messages.lua"

SERVER_CPU = 0  # the server under test, alone
LOAD_CPU = 1  # load generator, fake upstream, redis-server

MODEL = "claude-sonnet-5-5"
BODY = {"model": MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]}
STREAM_BODY = {**BODY, "stream": True}
BUDGET_TOKENS_PER_DAY = 1_000_000_000_000
MAX_CONCURRENT_CALLS = 512
DURABLE_TIMEOUT_MS = 100
LATENCY_RATE = 500.0
WRK_CONNECTIONS = 32
THROUGHPUT_RUNS = 3

LITELLM_VERSION = "1.106.2"
LITELLM_BUDGET_USD = 1_000_000

TARGETS = {  # report, don't assert
    "overhead_p50_ms": ("<=", 1.0),
    "overhead_p99_ms": ("<=", 5.0),
    "rps": (">=", 1500.0),
    "ratio": (">=", 3.0),
    "rss_mb": ("<=", 80.0),
}

NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run_benchmark(
    name: str,
    benchmark: Callable[[Path], str],
    *,
    keep: bool,
    failures: tuple[type[Exception], ...] = (),
) -> int:
    """Run `benchmark(workdir)` with a new folder for its logs, stop every process started
    meanwhile (newest first), and print its last line. On a failure (a harness error, or one of
    `failures`) print it and keep the folder; else remove the folder unless `keep`."""
    workdir = Path(tempfile.mkdtemp(prefix=f"kubeagents-{name}-"))
    caught: tuple[type[Exception], ...] = (
        HarnessError, subprocess.SubprocessError, OSError, *failures
    )  # fmt: skip
    try:
        line = benchmark(workdir)
    except caught as error:
        say(f"{name} failed: {error}")
        say(f"logs kept in {workdir}")
        return 1
    finally:
        for process in reversed(list(ManagedProcess.registry)):
            process.stop()
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    say(line)
    return 0


def check_idle(name: str) -> None:
    """Print how busy the machine was in the second before the benchmark starts; warn when
    other processes or the hypervisor took much of it."""
    meter = Meter()
    time.sleep(1.0)
    before = meter.stop()
    say(f"{name}: {os.cpu_count()} CPUs; in the second before start: {before.describe()}")
    if before.foreign > 10 or before.steal > 10:
        say("  WARNING: the machine is not idle; figures will be noisy and pessimistic")


def start_fake(workdir: Path, *, record: bool = False) -> tuple[ManagedProcess, str]:
    """The fake upstream with zero latency; it keeps no request log unless `record`."""
    argv = [str(KUBEAGENTS), "fake-anthropic", "--port", "0"]
    if not record:
        argv += ["--max-recorded", "0"]
    fake = ManagedProcess("fake-anthropic", argv, workdir / "fake.log")
    return fake, fake.wait_for_log(r"listening on (http://\S+)", timeout=30).group(1)


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# --- processes and CPUs ------------------------------------------------------------------


def pin(pid: int, cpu: int) -> None:
    """Move every thread of `pid` to `cpu` (threads started later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except ProcessLookupError:
            continue


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise HarnessError(f"no {field} in /proc/{pid}/status")


def rss_mib(pid: int, *, tree: bool = False, field: str = "VmRSS") -> float:
    pids = descendants(pid) if tree else [pid]
    return sum(status_kib(each, field) for each in pids) / 1024


def cpu_seconds(pid: int, *, tree: bool = False) -> float:
    """User + system CPU time of `pid` (all its threads), optionally of its process tree."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for each in descendants(pid) if tree else [pid]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _stat_seconds() -> dict[str, list[float]]:
    """/proc/stat per CPU ("cpu" = all): user, nice, system, idle, iowait, irq, softirq, steal."""
    tick = os.sysconf("SC_CLK_TCK")
    times: dict[str, list[float]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu"):
            times[name] = [int(value) / tick for value in values[:8]]
    return times


def _our_seconds() -> float:
    """CPU time of every process of this run: the servers, this script, its waited children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    for process in ManagedProcess.registry:
        if process.alive():
            total += cpu_seconds(process.pid, tree=True)
    return total


@dataclass
class Usage:
    """What the CPUs did during a measurement."""

    busy: dict[str, float]  # cpuN -> % busy (anything but idle and iowait)
    foreign: float  # % of a core used by processes outside the benchmark (user + system)
    steal: float  # % of a core taken by the hypervisor from this virtual machine
    cpu: dict[str, float]  # watched process -> CPU seconds

    def describe(self) -> str:
        busy = ", ".join(f"{core} {value:.0f}%" for core, value in sorted(self.busy.items()))
        return (
            f"cores busy: {busy}; other processes {self.foreign:.0f}%, "
            f"hypervisor steal {self.steal:.0f}% of a core"
        )


class Meter:
    """Measures `Usage` from construction to `stop()`."""

    def __init__(self, watch: Mapping[str, Callable[[], float]] | None = None) -> None:
        self.watch = dict(watch or {})
        self.started = time.monotonic()
        self.stat = _stat_seconds()
        self.ours = _our_seconds()
        self.cpu = {name: read() for name, read in self.watch.items()}

    def stop(self) -> Usage:
        elapsed = max(1e-9, time.monotonic() - self.started)
        stat = _stat_seconds()
        delta = {
            name: [after - before for after, before in zip(values, self.stat[name], strict=True)]
            for name, values in stat.items()
        }
        busy = {
            name: 100.0 * (sum(values) - values[3] - values[4]) / max(1e-9, sum(values))
            for name, values in delta.items()
            if name != "cpu"
        }
        machine = sum(delta["cpu"][:3])  # user, nice, system
        foreign = max(0.0, machine - (_our_seconds() - self.ours))
        return Usage(
            busy=busy,
            foreign=100.0 * foreign / elapsed,
            steal=100.0 * delta["cpu"][7] / elapsed,
            cpu={name: read() - self.cpu[name] for name, read in self.watch.items()},
        )


# --- HTTP helpers (loopback only) --------------------------------------------------------


def _loopback(url: str) -> str:
    if not url.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise HarnessError(f"the benchmark only talks to loopback, not {url}")
    return url


def post(url: str, body: Mapping[str, Any], headers: Mapping[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(  # noqa: S310 - http on loopback only, checked
        _loopback(url),
        data=json_bytes(body),
        method="POST",
        headers={
            "content-type": "application/json",
            "anthropic-version": "2023-06-01",
            **headers,
        },
    )
    try:
        with NO_PROXY_OPENER.open(request, timeout=30) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


def get_json(url: str, headers: Mapping[str, str] | None = None) -> Any:
    request = urllib.request.Request(_loopback(url), headers=dict(headers or {}))  # noqa: S310
    with NO_PROXY_OPENER.open(request, timeout=10) as response:
        return json.loads(response.read())


def smoke(name: str, url: str, headers: Mapping[str, str]) -> None:
    """One plain and one streamed call must succeed before any load is sent."""
    for body, expect in ((BODY, b'"type":"message"'), (STREAM_BODY, b"message_stop")):
        status, payload = post(url + "/v1/messages", body, headers)
        if status != 200 or expect not in payload.replace(b'": "', b'":"'):
            raise HarnessError(f"{name}: smoke call answered {status}: {payload[:400]!r}")


# --- load ----------------------------------------------------------------------------------


def run_loadgen(
    targets: Mapping[str, str], *, body: Mapping[str, Any], phase_seconds: float
) -> dict[str, Any]:
    names = list(targets)
    order = [*names, *reversed(names)] * 2  # ABBA twice: a drift falls on both alike
    argv = [
        "taskset", "-c", str(LOAD_CPU), sys.executable, str(LOADGEN),
        *(arg for name, url in targets.items() for arg in ("--target", f"{name}={url}")),
        "--order", ",".join(order),
        "--rate", str(LATENCY_RATE),
        "--phase-seconds", str(phase_seconds),
        "--warmup", "1",
        "--header", "x-api-key: bench-key",
        "--header", "anthropic-version: 2023-06-01",
        "--body", json_bytes(body).decode(),
    ]  # fmt: skip
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=60 + 10 * phase_seconds, check=False
    )
    if done.returncode != 0:
        raise HarnessError(f"loadgen failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    for name, stats in result["targets"].items():
        failed = stats["requests"] - stats["ok"] + stats["connection_errors"] + stats["unfinished"]
        if failed:
            raise HarnessError(f"loadgen: {failed} failed calls to {name}: {json.dumps(stats)}")
    return result


@dataclass
class WrkResult:
    requests: int
    errors: int
    seconds: float
    latency_p50_ms: float
    latency_p99_ms: float

    @property
    def rps(self) -> float:
        return (self.requests - self.errors) / self.seconds


def run_wrk(url: str, seconds: float, *, api_key: str = "bench-key") -> WrkResult:
    env = {**os.environ, "BENCH_BODY": json_bytes(BODY).decode(), "BENCH_API_KEY": api_key}
    argv = [
        "taskset", "-c", str(LOAD_CPU), "wrk", "-t1", f"-c{WRK_CONNECTIONS}",
        f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(WRK_SCRIPT),
        url + "/v1/messages",
    ]  # fmt: skip
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=seconds + 60, check=False
    )
    line = next((line for line in done.stdout.splitlines() if line.startswith("BENCH_WRK ")), None)
    if done.returncode != 0 or line is None:
        raise HarnessError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    summary = json.loads(line.removeprefix("BENCH_WRK "))
    errors = sum(
        summary[key]
        for key in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return WrkResult(
        requests=summary["requests"],
        errors=errors,
        seconds=summary["duration_us"] / 1e6,
        latency_p50_ms=summary["latency_us"]["p50"] / 1000,
        latency_p99_ms=summary["latency_us"]["p99"] / 1000,
    )


def throughput(
    name: str,
    url: str,
    seconds: float,
    *,
    warmup: float,
    api_key: str = "bench-key",
    watch: Mapping[str, Callable[[], float]] | None = None,
) -> float:
    """The median req/s of THROUGHPUT_RUNS back-to-back wrk runs lasting `seconds` in all."""
    run_wrk(url, warmup, api_key=api_key)
    meter = Meter(watch)
    runs = [
        run_wrk(url, seconds / THROUGHPUT_RUNS, api_key=api_key) for _ in range(THROUGHPUT_RUNS)
    ]
    usage = meter.stop()
    rates = sorted(run.rps for run in runs)
    median = statistics.median(rates)
    calls = sum(run.requests for run in runs)
    errors = sum(run.errors for run in runs)
    middle = sorted(runs, key=lambda run: run.rps)[len(runs) // 2]
    say(
        f"  {name:<20} {median:>8,.0f} req/s  (median of {len(runs)} runs: "
        f"{', '.join(f'{rate:,.0f}' for rate in rates)}; {calls:,} calls, {errors} errors; "
        f"wrk latency p50 {middle.latency_p50_ms:.1f} ms, p99 {middle.latency_p99_ms:.1f} ms)"
    )
    per_call = ", ".join(
        f"{proc} {used / max(1, calls) * 1e6:,.0f} µs" for proc, used in usage.cpu.items()
    )
    say(f"  {'':<20} {usage.describe()}")
    if per_call:
        say(f"  {'':<20} CPU per call: {per_call}")
    if errors:
        say(f"  WARNING: {errors} failed calls to {name} (not counted in req/s)")
    return median


# --- CPU idle policy -------------------------------------------------------------------------


@contextmanager
def polling_idle() -> Iterator[str | None]:
    """Hold the kernel's PM QoS CPU latency request at 0 µs, so idle CPUs poll instead of
    halting; yields None while held, or why it could not be held.

    This is what tuned's `latency-performance` profile does on latency-sensitive hosts. On this
    VM an idle vCPU halts, and waking it takes a trip through the hypervisor. A proxied call
    crosses between the two CPUs four times (generator -> proxy -> fake -> proxy -> generator)
    where a direct one crosses none (the generator and the fake share CPU 1), so with halting
    vCPUs part of the "overhead" is the VM's wake-up latency, not the proxy's work. Both
    figures are printed; the request is released when the file is closed."""
    try:
        fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    except OSError as error:
        yield f"cannot open /dev/cpu_dma_latency: {error.strerror}"
        return
    try:
        os.write(fd, struct.pack("i", 0))
        yield None
    finally:
        os.close(fd)


# --- LiteLLM ---------------------------------------------------------------------------------


def cache_dir() -> Path:
    configured = os.environ.get("KUBEAGENTS_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "kubeagents"


def litellm_venv() -> Path:
    """LiteLLM's own venv under the cache folder; created once (never the project's venv)."""
    venv = cache_dir() / "litellm-venv"
    python = venv / "bin" / "python"
    if python.exists():
        probe = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == LITELLM_VERSION:
            return venv
    say(f"installing litellm[proxy]=={LITELLM_VERSION} into {venv} (first run only)")
    base = shutil.which("python3") or sys.executable
    subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
         f"litellm[proxy]=={LITELLM_VERSION}"],
        check=True,
    )  # fmt: skip
    return venv


def start_litellm(workdir: Path, upstream_url: str) -> tuple[ManagedProcess, str, str]:
    """LiteLLM's proxy, one worker, pinned to the server CPU; returns (process, url, key)."""
    venv = litellm_venv()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        f'    litellm_params: {{model: anthropic/{MODEL}, api_base: "{upstream_url}", '
        "api_key: sk-fake}\n"
        "litellm_settings: {callbacks: [], num_retries: 0, request_timeout: 30, "
        f"max_budget: {LITELLM_BUDGET_USD}, budget_duration: 1d}}\n"
    )
    master_key = "sk-" + secrets.token_hex(24)
    unreachable = "http://127.0.0.1:9"  # nothing of LiteLLM's may leave the machine
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KUBEAGENTS_")},
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_MASTER_KEY": master_key,
        "HTTP_PROXY": unreachable,
        "HTTPS_PROXY": unreachable,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    port = free_port()
    argv = [
        "taskset", "-c", str(SERVER_CPU), str(venv / "bin" / "litellm"),
        "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
        "--num_workers", "1",
    ]  # fmt: skip
    process = ManagedProcess("litellm", argv, workdir / "litellm.log", env=env, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    process.wait_until(
        lambda: get_json(url + "/health/liveliness") is not None,
        timeout=180,
        what="LiteLLM to answer /health/liveliness",
    )
    return process, url, master_key


# --- the benchmark ---------------------------------------------------------------------------


def overhead_line(label: str, direct: Mapping[str, float], proxied: Mapping[str, float]) -> str:
    return (
        f"  {label:<22} p50 {direct['p50']:6.3f} -> {proxied['p50']:6.3f} ms "
        f"(+{proxied['p50'] - direct['p50']:.3f}),  p99 {direct['p99']:6.3f} -> "
        f"{proxied['p99']:6.3f} ms (+{proxied['p99'] - direct['p99']:.3f}),  "
        f"p99.9 {direct['p999']:.2f} -> {proxied['p999']:.2f} ms"
    )


def check_target(name: str, value: float | None) -> str:
    if value is None:
        return "skipped"
    op, bound = TARGETS[name]
    met = value <= bound if op == "<=" else value >= bound
    return f"{'ok' if met else 'MISSED'} (target {op} {bound:g})"


def proxy_settings(redis_server: RedisServer, **extra: Any) -> dict[str, Any]:
    """The benchmarked proxy's settings: budgets on, a budget no run exhausts."""
    return {
        "redis_url": redis_server.url,
        "budget_tokens_per_day": BUDGET_TOKENS_PER_DAY,
        "max_concurrent_calls": MAX_CONCURRENT_CALLS,
        **extra,
    }


def durable_reservations(
    args: argparse.Namespace,
    workdir: Path,
    master: RedisServer,
    proxy: ProxyProcess,
    fake_url: str,
    phase: float,
) -> dict[str, float]:
    """The cost of `durable_replicas=1`: the same proxy settings with and without Redis WAIT,
    both against the master with one replica attached, side by side in one run."""
    say()
    say(
        "durable reservations: durable_replicas=1 (WAIT for one replica, timeout "
        f"{DURABLE_TIMEOUT_MS} ms) vs 0, both with a replica attached to the ledger's Redis"
    )
    replica = start_redis(workdir / "redis-replica")
    pin(replica.process.pid, LOAD_CPU)
    durable: ProxyProcess | None = None
    try:
        with replica.client() as client:
            client.replicaof("127.0.0.1", master.port)
            wait_for(
                lambda: client.info("replication").get("master_link_status") == "up",
                timeout=30,
                what="the replica to finish its first sync",
            )
        durable = start_proxy(
            workdir / "proxy-durable",
            upstream_url=fake_url,
            settings=proxy_settings(
                master, durable_replicas=1, durable_timeout_ms=DURABLE_TIMEOUT_MS
            ),
            name="proxy-durable",
        )
        pin(durable.process.pid, SERVER_CPU)
        smoke("proxy-durable", durable.url, {"x-api-key": "bench-key"})
        targets = {"plain": proxy.url + "/v1/messages", "durable": durable.url + "/v1/messages"}
        latency = run_loadgen(targets, body=BODY, phase_seconds=phase)["targets"]
        plain_ms, durable_ms = latency["plain"]["latency_ms"], latency["durable"]["latency_ms"]
        say(
            f"  at {LATENCY_RATE:.0f} req/s: p50 {plain_ms['p50']:.3f} -> "
            f"{durable_ms['p50']:.3f} ms ({durable_ms['p50'] - plain_ms['p50']:+.3f}), "
            f"p99 {plain_ms['p99']:.3f} -> {durable_ms['p99']:.3f} ms "
            f"({durable_ms['p99'] - plain_ms['p99']:+.3f})"
        )
        plain_rps = throughput("proxy, no WAIT", proxy.url, args.duration, warmup=args.warmup)
        durable_rps = throughput("proxy, WAIT 1", durable.url, args.duration, warmup=args.warmup)
        say(f"  durable throughput is {durable_rps / plain_rps:.0%} of the plain proxy's")
        return {
            "durable_p50_added_ms": durable_ms["p50"] - plain_ms["p50"],
            "durable_rps_ratio": durable_rps / plain_rps,
        }
    finally:
        if durable is not None:
            durable.stop()
        replica.stop()


def benchmark(args: argparse.Namespace, workdir: Path) -> str:
    for tool in ("wrk", "redis-server", "taskset"):
        if shutil.which(tool) is None:
            raise HarnessError(f"{tool} not found on PATH (make bench-proxy installs it)")
    if len(os.sched_getaffinity(0)) < 2:
        raise HarnessError("needs 2 CPUs: the server under test gets one to itself")

    check_idle("bench-proxy")
    say(
        f"  CPU layout: server under test alone on CPU {SERVER_CPU}; load generator, fake "
        f"upstream and redis-server on CPU {LOAD_CPU}"
    )

    fake, fake_url = start_fake(workdir)
    pin(fake.pid, LOAD_CPU)
    redis_server = start_redis(workdir / "redis")
    pin(redis_server.process.pid, LOAD_CPU)
    proxy = start_proxy(
        workdir / "proxy",
        upstream_url=fake_url,
        settings=proxy_settings(redis_server),
    )
    proxy_pid = proxy.process.pid
    pin(proxy_pid, SERVER_CPU)
    time.sleep(1.0)  # let start-up finish (imports, first GC) before reading RSS
    proxy_rss = rss_mib(proxy_pid)
    say()
    say("idle RSS (VmRSS after start-up, before any call; MB = MiB)")
    say(
        f"  proxy {proxy_rss:6.1f} MB (anonymous {rss_mib(proxy_pid, field='RssAnon'):.1f}, "
        f"files {rss_mib(proxy_pid, field='RssFile'):.1f})   fake {rss_mib(fake.pid):6.1f} MB"
    )

    smoke("fake", fake_url, {"x-api-key": "bench-key"})
    smoke("proxy", proxy.url, {"x-api-key": "bench-key"})
    budget = get_json(proxy.admin_url + "/kubeagents/budget")
    if budget.get("budgets") is not True:
        raise HarnessError(f"the proxy's budgets are not on: {budget}")

    targets = {"direct": fake_url + "/v1/messages", "proxy": proxy.url + "/v1/messages"}
    phase = args.latency_seconds / 4

    def measure(body: Mapping[str, Any]) -> tuple[dict[str, Any], Usage]:
        meter = Meter({"proxy": lambda: cpu_seconds(proxy_pid)})
        result: dict[str, Any] = run_loadgen(targets, body=body, phase_seconds=phase)["targets"]
        usage = meter.stop()
        calls = result["proxy"]["requests"] + LATENCY_RATE  # + the 1 s warm-up
        result["proxy_cpu_us"] = usage.cpu["proxy"] / calls * 1e6
        return result, usage

    def latency_pass(idle: str) -> tuple[float, float]:
        say()
        say(
            f"latency at a fixed {LATENCY_RATE:.0f} req/s, open loop, CPU idle {idle} "
            f"(loadgen.py on CPU {LOAD_CPU}; phases direct, proxy, proxy, direct, twice, "
            f"of {phase:g} s each)"
        )
        plain, plain_usage = measure(BODY)
        streamed, streamed_usage = measure(STREAM_BODY)
        direct, proxied = plain["direct"], plain["proxy"]
        say(overhead_line("non-streamed, total", direct["latency_ms"], proxied["latency_ms"]))
        direct, proxied = streamed["direct"], streamed["proxy"]
        say(overhead_line("stream, first byte", direct["first_byte_ms"], proxied["first_byte_ms"]))
        say(overhead_line("stream, total", direct["latency_ms"], proxied["latency_ms"]))
        runs = [(plain["direct"], plain["proxy"]), (streamed["direct"], streamed["proxy"])]
        worst_lag = max(stats["lag_ms"]["p99"] for pair in runs for stats in pair)
        calls = sum(stats["requests"] for pair in runs for stats in pair)
        say(
            f"  proxy CPU per call at this rate: {plain['proxy_cpu_us']:,.0f} µs non-streamed, "
            f"{streamed['proxy_cpu_us']:,.0f} µs streamed "
            f"({LATENCY_RATE * plain['proxy_cpu_us'] / 1e4:.0f}% and "
            f"{LATENCY_RATE * streamed['proxy_cpu_us'] / 1e4:.0f}% of its core)"
        )
        say(f"  {calls:,} calls, all answered 200; generator send lag p99 {worst_lag:.2f} ms")
        say(f"  non-streamed run: {plain_usage.describe()}")
        say(f"  streamed run:     {streamed_usage.describe()}")
        return (
            plain["proxy"]["latency_ms"]["p50"] - plain["direct"]["latency_ms"]["p50"],
            plain["proxy"]["latency_ms"]["p99"] - plain["direct"]["latency_ms"]["p99"],
        )

    halting = latency_pass("as the machine sets it (vCPUs halt when idle)")
    with polling_idle() as held:
        if held is None:
            overhead_p50, overhead_p99 = latency_pass("polling (cpu_dma_latency held at 0)")
        else:
            say()
            say(f"latency with polling idle CPUs: not measured ({held})")
            overhead_p50, overhead_p99 = halting

    say()
    say(
        f"peak throughput: wrk -t1 -c{WRK_CONNECTIONS}, {args.duration:g} s after a "
        f"{args.warmup:g} s warm-up; server on CPU {SERVER_CPU}, wrk + the rest on CPU {LOAD_CPU}"
    )
    rps = throughput(
        "proxy (budgets on)",
        proxy.url,
        args.duration,
        warmup=args.warmup,
        watch={
            "proxy": lambda: cpu_seconds(proxy_pid),
            "fake": lambda: cpu_seconds(fake.pid),
            "redis": lambda: cpu_seconds(redis_server.process.pid),
        },
    )
    pin(fake.pid, SERVER_CPU)
    fake_rps = throughput(
        "fake directly",
        fake_url,
        args.duration,
        warmup=args.warmup,
        watch={"fake": lambda: cpu_seconds(fake.pid)},
    )
    pin(fake.pid, LOAD_CPU)

    durable = durable_reservations(args, workdir, redis_server, proxy, fake_url, phase)

    budget = get_json(proxy.admin_url + "/kubeagents/budget")
    tokens = budget["scopes"][0]["tokens"]
    say(
        f"  budget ledger after the runs: {tokens['used']:,} tokens used, "
        f"{tokens['reserved']:,} reserved, limit {tokens['limit']:,}"
    )
    say(
        f"  proxy RSS after the runs: {rss_mib(proxy_pid):.1f} MB "
        f"(peak {rss_mib(proxy_pid, field='VmHWM'):.1f} MB)"
    )
    proxy.stop()
    redis_server.stop()

    litellm_rps: float | None = None
    if not args.skip_litellm:
        say()
        say(f"LiteLLM proxy {LITELLM_VERSION}, one worker, budget ${LITELLM_BUDGET_USD:,}/1d")
        litellm, litellm_url, master_key = start_litellm(workdir / "litellm", fake_url)
        time.sleep(1.0)
        say(f"  idle RSS {rss_mib(litellm.pid, tree=True):.1f} MB")
        smoke("litellm", litellm_url, {"x-api-key": master_key})
        litellm_pid = litellm.pid
        litellm_rps = throughput(
            "litellm",
            litellm_url,
            args.duration,
            warmup=max(args.warmup, 3.0),
            api_key=master_key,
            watch={
                "litellm": lambda: cpu_seconds(litellm_pid, tree=True),
                "fake": lambda: cpu_seconds(fake.pid),
            },
        )
        litellm.stop()
    fake.stop()

    ratio = rps / litellm_rps if litellm_rps else None
    figures: dict[str, float | None] = {
        "overhead_p50_ms": overhead_p50,
        "overhead_p99_ms": overhead_p99,
        "rps": rps,
        "ratio": ratio,
        "rss_mb": proxy_rss,
    }
    say()
    say("targets (reported, not asserted)")
    for name, value in figures.items():
        shown = "-" if value is None else f"{value:,.3f}"
        say(f"  {name:<16} {shown:>10}  {check_target(name, value)}")
    say(
        f"  with halting idle vCPUs (the machine's default): overhead p50 {halting[0]:+.3f} ms, "
        f"p99 {halting[1]:+.3f} ms (see polling_idle)"
    )
    say(f"  proxy throughput is {rps / fake_rps:.0%} of the fake's own")
    say(f"  logs: {workdir}" + ("" if args.keep else " (removed; --keep keeps them)"))

    def number(value: float | None, digits: int) -> str:
        return "skipped" if value is None else f"{value:.{digits}f}"

    return (
        f"bench-proxy: overhead_p50_ms={number(overhead_p50, 3)} "
        f"overhead_p99_ms={number(overhead_p99, 3)} rps={number(rps, 0)} "
        f"litellm_rps={number(litellm_rps, 1)} ratio={number(ratio, 1)} "
        f"rss_mb={number(proxy_rss, 1)} "
        f"durable_p50_added_ms={number(durable['durable_p50_added_ms'], 3)} "
        f"durable_rps_ratio={number(durable['durable_rps_ratio'], 2)}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--skip-litellm", action="store_true", help="leave LiteLLM out")
    parser.add_argument(
        "--duration", type=float, default=12.0, help="seconds of each throughput run (12)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="unmeasured seconds before each (2)"
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=10.0,
        help="seconds at 500 req/s per target and kind of call (10, in two phases)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs' folder on success")
    args = parser.parse_args(argv)
    return run_benchmark("bench-proxy", lambda workdir: benchmark(args, workdir), keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
