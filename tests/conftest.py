"""Session fixtures on real parts, shared by every test in the suite.

- `redis_server` / `redis_url` / `redis_client`: a real redis-server on a free loopback port,
  flushed before each test that asks for it. `valkey_server`: the same with valkey-server;
  `redis_url_on_each_server`: a test that asks for it runs once on each (redis-server,
  valkey-server), emptied first: a module overrides `redis_url` with it to run every test there
  on both (the ledger and queue scripts); `server_kind` does the same for a test that starts
  servers itself.
- `redis_cluster`: a real 3-node Redis Cluster, flushed before each test that asks for it.
- `helm`, `kubectl`: the real binaries from the tools folder.
- `fake_anthropic`: the fake Anthropic Messages API as a separate process, reset per test.
- `start_proxies`: start `kubeagents proxy` processes in front of the fake (stopped after the test).
- `start_runtimes`: start `kubeagents runtime` processes next to the directory's `proxy` fixture,
  with the directory's `runtime_defaults` (stopped after the test).
- `cluster`: a real Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler,
  kwok nodes) for the session; `namespace`: a fresh namespace in it per test.
- `real_cluster`: a control plane with a real node that runs the images built here; `product`:
  the whole product installed into it as `make run` installs it.

A part that cannot start fails the test with the reason; nothing is skipped.

Tests that need no control plane, node, image or process of the product's own are marked `unit`
here (`make test-unit` runs them: the edit-test loop). A test is a unit test unless it uses one
of `NOT_UNIT_FIXTURES` (directly or through another fixture), lives under `NOT_UNIT_FOLDERS` or
directly in tests/ (the harness's own tests), or is marked `integration` (it starts processes
or several real servers itself: the CLI as a process, MCP servers, a Sentinel failover).
`redis_server`, `valkey_server` and the fake Anthropic API are allowed: each is one process per
session.
When a test fails, the new log lines of every process the harness started are attached to the
report.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from harness.binaries import tool, tools_dir
from harness.controlplane import ControlPlane, RealNodeOptions, start_control_plane
from harness.fake_anthropic import start_fake_anthropic
from harness.processes import HarnessError, ManagedProcess
from harness.product import Product, install
from harness.proxy import ProxyProcess, StartProxy, start_proxy
from harness.redis_servers import (
    SERVER_KINDS,
    RedisClusterNodes,
    RedisServer,
    ServerKind,
    start_redis,
    start_redis_cluster,
)
from harness.runtime import RuntimeProcess, StartRuntime, start_runtime
from kubeagents.fake_anthropic import FakeAnthropicControl

T = TypeVar("T")
LOG_OFFSETS = pytest.StashKey[dict[int, int]]()
# Seconds before a task held by a silent (dead) pod is taken over by another (`product`).
VISIBILITY_TIMEOUT = 6


def start_or_fail(start: Callable[[], T]) -> T:
    """Run a harness start function; turn a HarnessError into a test failure with its reason."""
    try:
        return start()
    except HarnessError as error:
        pytest.fail(f"a real part of the test harness did not start: {error}", pytrace=False)


NOT_UNIT_FIXTURES = frozenset(
    {
        "cluster",
        "real_cluster",
        "helm",
        "kubectl",
        "redis_cluster_nodes",
        "start_proxies",
        "start_probes",
        "start_runtimes",
        "start_agents",
        "start_operator",
        "mcp_server",
    }
)
NOT_UNIT_FOLDERS = ("charts", "real_pods", "benchmarks")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "unit: needs no control plane, node, image or product process (make test-unit)"
    )
    config.addinivalue_line(
        "markers",
        "integration: starts processes or several real servers itself; not in make test-unit",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    tests = Path(__file__).parent
    for item in items:
        folders = item.path.relative_to(tests).parts[:-1]
        fixtures = set(getattr(item, "fixturenames", ()))
        if (
            folders
            and folders[0] not in NOT_UNIT_FOLDERS
            and not fixtures & NOT_UNIT_FIXTURES
            and item.get_closest_marker("integration") is None
        ):
            item.add_marker(pytest.mark.unit)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[LOG_OFFSETS] = {id(p): p.log_size() for p in ManagedProcess.registry}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        offsets = item.stash.get(LOG_OFFSETS, {})
        for process in list(ManagedProcess.registry):
            text = process.log_text(offsets.get(id(process), 0))
            if text.strip():
                tail = "\n".join(text.splitlines()[-60:])
                report.sections.append((f"log of {process.name} (pid {process.pid})", tail))
    return report


# --- Redis ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_or_fail(lambda: start_redis(tmp_path_factory.mktemp("redis")))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A session's valkey-server; a missing binary fails the test with how to install it."""
    server = start_or_fail(
        lambda: start_redis(tmp_path_factory.mktemp("valkey"), kind="valkey-server")
    )
    yield server
    server.stop()


def _emptied(server: RedisServer) -> str:
    with server.client() as client:
        client.flushall()
    return server.url


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the session's redis-server, emptied for this test."""
    return _emptied(redis_server)


@pytest.fixture(params=SERVER_KINDS)
def server_kind(request: pytest.FixtureRequest) -> ServerKind:
    """redis-server, then valkey-server: for a test that starts servers of its own."""
    kind: ServerKind = request.param
    return kind


@pytest.fixture(params=SERVER_KINDS)
def redis_url_on_each_server(request: pytest.FixtureRequest) -> str:
    """The URL of the session's redis-server, then of its valkey-server, emptied for this test."""
    fixture = {"redis-server": "redis_server", "valkey-server": "valkey_server"}[request.param]
    server: RedisServer = request.getfixturevalue(fixture)
    return _emptied(server)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_cluster_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    cluster = start_or_fail(lambda: start_redis_cluster(tmp_path_factory.mktemp("cluster")))
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster(redis_cluster_nodes: RedisClusterNodes) -> RedisClusterNodes:
    """The session's 3-node Redis Cluster, every node emptied for this test."""
    for client in redis_cluster_nodes.node_clients():
        with client:
            client.flushall()
    return redis_cluster_nodes


# --- helm and kubectl ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def helm() -> Path:
    return start_or_fail(lambda: tool("helm"))


@pytest.fixture(scope="session")
def kubectl() -> Path:
    return start_or_fail(lambda: tool("kubectl"))


# --- Kubernetes -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A real control plane with two kwok nodes; `cluster.kubeconfig` is its admin kubeconfig."""
    plane = start_or_fail(lambda: start_control_plane(tmp_path_factory.mktemp("cluster")))
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane with one real node (containerd, kubelet, kube-proxy, CoreDNS, the
    local-path StorageClass) and no kwok nodes; the images come from `make images`."""
    workdir = tmp_path_factory.mktemp("real-node")
    cache = Path(os.environ.get("KUBEAGENTS_CACHE", Path.home() / ".cache" / "kubeagents"))
    plane = start_or_fail(
        lambda: start_control_plane(workdir, nodes=0, real_node=RealNodeOptions(cache=cache))
    )
    yield plane
    plane.stop()


@pytest.fixture(scope="session")
def product(real_cluster: ControlPlane) -> Product:
    """The platform chart, the fake upstream and the two example agents, installed into
    `real_cluster` exactly as `make run` installs them (harness/product.py), with a short
    visibility timeout so that a killed pod's task is taken over within seconds."""
    installed = Product(real_cluster.kubeconfig)
    start_or_fail(
        lambda: install(
            installed,
            agent_args=("--set", f"runtime.visibilityTimeoutSeconds={VISIBILITY_TIMEOUT}"),
        )
    )
    return installed


@pytest.fixture(scope="session")
def operator_crds(cluster: ControlPlane) -> list[str]:
    """The CRDs of KEDA and the Prometheus operator (pinned in tests/tools.toml, linked into
    .tools/crds by `make tools`) installed in the session's control plane; their names."""
    crd_dir = tools_dir().parent / "crds"
    files = sorted(crd_dir.glob("*/*.yaml"))
    if not files:
        pytest.fail(f"no CRDs in {crd_dir}: run `make tools`", pytrace=False)
    return cluster.install_crds(files)


@pytest.fixture
def namespace(cluster: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace for this test, deleted (without waiting) afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


# --- the fake Anthropic API ----------------------------------------------------------------


@pytest.fixture(scope="session")
def fake_anthropic_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FakeAnthropicControl]:
    process, control = start_or_fail(
        lambda: start_fake_anthropic(tmp_path_factory.mktemp("fake-anthropic"))
    )
    yield control
    control.close()
    process.stop()


@pytest.fixture
def fake_anthropic(fake_anthropic_server: FakeAnthropicControl) -> FakeAnthropicControl:
    """The fake Anthropic API (a separate process), with its script and records reset."""
    fake_anthropic_server.reset()
    return fake_anthropic_server


# --- pod processes ---------------------------------------------------------------------------


@pytest.fixture
def start_proxies(
    tmp_path_factory: pytest.TempPathFactory, fake_anthropic: FakeAnthropicControl
) -> Iterator[StartProxy]:
    """Start proxies (`start(**settings)`) in front of the fake; all stopped after the test."""
    started: list[ProxyProcess] = []

    def start(
        name: str = "proxy", extra_env: dict[str, str] | None = None, **settings: Any
    ) -> ProxyProcess:
        try:
            proxy = start_proxy(
                tmp_path_factory.mktemp(name),
                upstream_url=fake_anthropic.base_url,
                settings=settings,
                name=name,
                extra_env=extra_env,
            )
        except HarnessError as error:
            pytest.fail(f"the proxy did not start: {error}", pytrace=False)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def runtime_defaults() -> dict[str, Any]:
    """Settings of every runtime `start_runtimes` starts (a test directory may override it)."""
    return {}


@pytest.fixture
def start_runtimes(
    tmp_path_factory: pytest.TempPathFactory,
    proxy: ProxyProcess,
    redis_url: str,
    runtime_defaults: dict[str, Any],
) -> Iterator[StartRuntime]:
    """Start runtimes (`start(name=..., **settings)`) next to the directory's `proxy`, with
    `runtime_defaults` under `settings`; all stopped after the test."""
    started: list[RuntimeProcess] = []

    def start(
        name: str = "runtime", extra_env: dict[str, str] | None = None, **settings: Any
    ) -> RuntimeProcess:
        values: dict[str, Any] = {**runtime_defaults, **settings}
        started.append(
            start_or_fail(
                lambda: start_runtime(
                    tmp_path_factory.mktemp(name),
                    proxy_url=values.pop("proxy_url", proxy.url),
                    redis_url=redis_url,
                    settings=values,
                    name=name,
                    extra_env=extra_env,
                )
            )
        )
        return started[-1]

    yield start
    for runtime in started:
        runtime.stop()
