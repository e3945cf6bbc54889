"""Benchmark of `kubeagents probe`: idle memory, and what the kubelet's polling costs.

    .venv/bin/python tests/benchmarks/bench_probe.py

Starts the fake, redis-server, a proxy, a real MCP server, an agent runtime connected to it and
two probes (one checking the MCP server through the runtime's /status, one not) on loopback,
waits until both are Ready, then measures:

1. idle RSS (VmRSS) of each probe once Ready (neither talks MCP nor loads the MCP SDK);
2. `/readyz` answered from memory: 2,000 sequential GETs, p50/p99 latency and the probe's CPU
   per request, against the same for `/livez` (a constant answer) in the same run as baseline;
3. the model calls the polling caused (it must be none).

Ends with one line:

    bench-probe: rss_mb=.. rss_mcp_mb=.. readyz_p50_ms=.. readyz_p99_ms=.. livez_p50_ms=..
                 ratio=.. model_calls=..   (on one line)
"""

from __future__ import annotations

import http.client
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent.parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from benchmarks.bench_proxy import cpu_seconds, rss_mib, say, start_fake  # noqa: E402
from harness.mcp_servers import start_mcp_server  # noqa: E402
from harness.probe import ProbeProcess, start_probe  # noqa: E402
from harness.processes import HarnessError, ManagedProcess, wait_for  # noqa: E402
from harness.proxy import start_proxy  # noqa: E402
from harness.redis_servers import start_redis  # noqa: E402
from harness.runtime import start_runtime  # noqa: E402
from kubeagents.fake_anthropic import FakeAnthropicControl, Reply  # noqa: E402

REQUESTS = 2_000
RSS_TARGET_MB = 80.0


def timed_gets(probe: ProbeProcess, path: str) -> tuple[list[float], float]:
    """`REQUESTS` sequential GETs on one keep-alive connection: latencies (ms), CPU per GET (µs)."""
    host, port = probe.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    latencies = []
    cpu_before = cpu_seconds(probe.process.pid)
    for _ in range(REQUESTS):
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        latencies.append((time.perf_counter() - started) * 1000)
        if response.status != 200:
            raise HarnessError(f"{path} answered {response.status}")
    cpu = (cpu_seconds(probe.process.pid) - cpu_before) / REQUESTS * 1e6
    connection.close()
    return latencies, cpu


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def benchmark(workdir: Path) -> str:
    _, fake_url = start_fake(workdir, record=True)  # the polling test counts model calls
    control = FakeAnthropicControl(fake_url)
    control.set_default(Reply.with_text("READY"))
    redis_server = start_redis(workdir / "redis")
    proxy = start_proxy(
        workdir / "proxy",
        upstream_url=fake_url,
        settings={"redis_url": redis_server.url, "budget_tokens_per_day": 1_000_000},
    )
    mcp = start_mcp_server(workdir / "mcp")
    runtime = start_runtime(
        workdir / "runtime",
        proxy_url=proxy.url,
        redis_url=redis_server.url,
        settings={
            "agent": "with-mcp",
            "mcp_servers": [{"name": "tools", "transport": "http", "url": mcp.url}],
        },
    )
    common: dict[str, Any] = {"redis_url": redis_server.url, "interval_seconds": 3600}
    probes = {
        "plain": start_probe(
            workdir / "probe",
            proxy_url=proxy.url,
            proxy_admin_url=proxy.admin_url,
            settings={**common, "agent": "plain"},
            name="probe",
        ),
        "mcp": start_probe(
            workdir / "probe-mcp",
            proxy_url=proxy.url,
            proxy_admin_url=proxy.admin_url,
            settings={
                **common,
                "agent": "with-mcp",
                "check_mcp": True,
                "runtime_status_url": f"{runtime.url}/status",
            },
            name="probe-mcp",
        ),
    }
    for probe in probes.values():

        def ready(probe: ProbeProcess = probe) -> bool:
            return probe.get("/readyz")[0] == 200

        wait_for(ready, timeout=30, what=f"{probe.process.name} to be Ready")
    time.sleep(2.0)  # let the first checks' garbage settle before reading RSS
    rss = {name: rss_mib(probe.process.pid) for name, probe in probes.items()}
    say("idle RSS once Ready (VmRSS; MB = MiB)")
    say(f"  probe                      {rss['plain']:6.1f} MB   target <= {RSS_TARGET_MB:g}")
    say(f"  probe checking an MCP server {rss['mcp']:4.1f} MB   (through the runtime's /status)")

    calls_before = len([r for r in control.requests() if r.path == "/v1/messages"])
    probe = probes["plain"]
    livez, livez_cpu = timed_gets(probe, "/livez")
    readyz, readyz_cpu = timed_gets(probe, "/readyz")
    calls = len([r for r in control.requests() if r.path == "/v1/messages"]) - calls_before
    say()
    say(f"{REQUESTS:,} sequential GETs on one connection (the kubelet polls /readyz)")
    for name, values, cpu in (("/livez", livez, livez_cpu), ("/readyz", readyz, readyz_cpu)):
        say(
            f"  {name:<8} p50 {percentile(values, 0.5):.3f} ms  p99 {percentile(values, 0.99):.3f} "
            f"ms  mean {statistics.fmean(values):.3f} ms  probe CPU {cpu:,.0f} µs per GET"
        )
    ratio = percentile(readyz, 0.5) / percentile(livez, 0.5)
    say(f"  /readyz p50 / /livez p50 = {ratio:.2f}; model calls caused by the polling: {calls}")
    control.close()
    return (
        f"bench-probe: rss_mb={rss['plain']:.1f} rss_mcp_mb={rss['mcp']:.1f} "
        f"readyz_p50_ms={percentile(readyz, 0.5):.3f} readyz_p99_ms={percentile(readyz, 0.99):.3f} "
        f"livez_p50_ms={percentile(livez, 0.5):.3f} ratio={ratio:.2f} model_calls={calls}"
    )


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="kubeagents-bench-probe-"))
    try:
        line = benchmark(workdir)
    except (HarnessError, OSError) as error:
        say(f"bench-probe failed: {error}")
        say(f"logs kept in {workdir}")
        return 1
    finally:
        for process in list(ManagedProcess.registry):
            process.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    say(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
