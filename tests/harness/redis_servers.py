"""Real redis-server (or valkey-server) processes on free loopback ports: a standalone server,
one with TLS, a 3-node cluster, and a master with a replica and a Sentinel."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import redis

from harness.pki import CertificateAuthority
from harness.processes import HarnessError, ManagedProcess, free_port, wait_for

START_TIMEOUT = 20.0

ServerKind = Literal["redis-server", "valkey-server"]
# Both servers the ledger and queue scripts are tested on: Redis (Debian's 7.0) and Valkey 8,
# the platform chart's default.
SERVER_KINDS: tuple[ServerKind, ...] = ("redis-server", "valkey-server")

_INSTALL_HINTS = {
    "redis-server": "apt-get install redis-server redis-tools",
    "redis-cli": "apt-get install redis-server redis-tools",
    "valkey-server": "apt-get install -t bookworm-backports valkey-server valkey-tools",
    "valkey-cli": "apt-get install -t bookworm-backports valkey-server valkey-tools",
}


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise HarnessError(
            f"{binary} not found on PATH. `make redis-server` (part of `make tools` and "
            f"`make test`) installs it from Debian packages ({_INSTALL_HINTS[binary]})."
        )
    return path


def _start_node(
    name: str, port: int, workdir: Path, *extra: str, kind: ServerKind = "redis-server"
) -> ManagedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        _require(kind),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(workdir),
        "--save", "",
        "--appendonly", "no",
        "--protected-mode", "yes",
        *extra,
    ]  # fmt: skip
    process = ManagedProcess(name, argv, workdir / "redis.log")
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    try:
        process.wait_until(client.ping, timeout=START_TIMEOUT, what=f"{name} to answer PING")
    except HarnessError:
        process.stop()
        raise
    finally:
        client.close()
    return process


@dataclass
class RedisServer:
    """A standalone redis-server or valkey-server."""

    port: int
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        self.process.stop()


def start_redis(
    workdir: Path,
    *,
    port: int | None = None,
    persistent: bool = False,
    kind: ServerKind = "redis-server",
) -> RedisServer:
    """A standalone server. `port` and the same `workdir` restart a stopped one; `persistent`
    turns the append-only file on, so a restart keeps the data (as a production ledger must).
    `kind` picks the binary: redis-server or valkey-server (same protocol, same Lua)."""
    port = port if port is not None else free_port()
    extra = ("--appendonly", "yes", "--appendfsync", "always") if persistent else ()
    return RedisServer(port, _start_node(f"{kind}:{port}", port, workdir, *extra, kind=kind))


@dataclass
class RedisClusterNodes:
    """A Redis Cluster of master nodes on loopback (no replicas)."""

    ports: list[int]
    processes: list[ManagedProcess]

    @property
    def url(self) -> str:
        """A URL of one node; cluster clients discover the others."""
        return f"redis://127.0.0.1:{self.ports[0]}"

    def node_clients(self) -> list[redis.Redis]:
        return [redis.Redis(host="127.0.0.1", port=port) for port in self.ports]

    def cluster_client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.ports[0])

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


def start_redis_cluster(workdir: Path, nodes: int = 3) -> RedisClusterNodes:
    """Start `nodes` cluster-enabled servers and join them with `redis-cli --cluster create`."""
    ports: list[int] = []
    processes: list[ManagedProcess] = []
    try:
        for _ in range(nodes):
            port = free_port(also_free=(10000,))  # the cluster bus listens on port + 10000
            ports.append(port)
            processes.append(
                _start_node(
                    f"redis-cluster:{port}",
                    port,
                    workdir / str(port),
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "2000",
                )
            )  # fmt: skip
        create = subprocess.run(
            [_require("redis-cli"), "--cluster", "create",
             *(f"127.0.0.1:{port}" for port in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if create.returncode != 0:
            raise HarnessError(
                f"redis-cli --cluster create failed:\n{create.stdout}{create.stderr}"
            )
        clients = [redis.Redis(host="127.0.0.1", port=port) for port in ports]

        def all_ok() -> bool:
            return all(c.cluster("INFO")["cluster_state"] == "ok" for c in clients)

        wait_for(
            all_ok, timeout=START_TIMEOUT, what="every cluster node to report cluster_state:ok"
        )
        for client in clients:
            client.close()
    except BaseException:
        for process in processes:
            process.stop()
        raise
    return RedisClusterNodes(ports, processes)


@dataclass
class RedisSentinelSetup:
    """A master, a replica of it, and one Sentinel watching them (quorum 1)."""

    master: RedisServer
    replica: RedisServer
    sentinel_port: int
    sentinel: ManagedProcess
    master_name: str = "kubeagents"

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.master_name}"

    def sentinel_client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.sentinel_port, decode_responses=True)

    def stop(self) -> None:
        for process in (self.sentinel, self.replica.process, self.master.process):
            process.stop()


def start_redis_sentinel(
    workdir: Path, *, sentinel_password: str | None = None
) -> RedisSentinelSetup:
    """A master with one replica and one Sentinel (`redis-server --sentinel`) that can fail it
    over (`SENTINEL FAILOVER`); with `sentinel_password`, the Sentinel asks for it
    (`requirepass`)."""
    master = start_redis(workdir / "master")
    replica_port = free_port()
    replica = RedisServer(
        replica_port,
        _start_node(
            f"redis-replica:{replica_port}", replica_port, workdir / "replica",
            "--replicaof", "127.0.0.1", str(master.port),
        ),
    )  # fmt: skip
    sentinel_port = free_port()
    config = workdir / "sentinel" / "sentinel.conf"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {config.parent}\n"
        f"sentinel monitor kubeagents 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds kubeagents 1000\n"
        "sentinel failover-timeout kubeagents 5000\n"
        + (f"requirepass {sentinel_password}\n" if sentinel_password else "")
    )
    sentinel = ManagedProcess(
        f"redis-sentinel:{sentinel_port}",
        [_require("redis-server"), str(config), "--sentinel"],
        config.parent / "sentinel.log",
    )
    client = redis.Redis(
        host="127.0.0.1", port=sentinel_port, socket_timeout=1, password=sentinel_password
    )
    try:
        sentinel.wait_until(
            lambda: client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "kubeagents"),  # type: ignore[no-untyped-call]
            timeout=START_TIMEOUT,
            what="the Sentinel to know the master",
        )
    finally:
        client.close()
    return RedisSentinelSetup(master, replica, sentinel_port, sentinel)


@dataclass
class RedisTlsServer:
    """A redis-server that also listens with TLS on `tls_port`, its certificate signed by the
    throw-away CA in `ca_file` (for 127.0.0.1)."""

    server: RedisServer
    tls_port: int
    ca_file: Path

    @property
    def tls_url(self) -> str:
        return f"rediss://127.0.0.1:{self.tls_port}/0"

    def stop(self) -> None:
        self.server.stop()


def start_redis_tls(workdir: Path) -> RedisTlsServer:
    """A redis-server with a TLS port whose certificate a fresh CA signs; clients are not asked
    for certificates (`tls-auth-clients no`)."""
    ca = CertificateAuthority(workdir / "pki")
    pair = ca.issue("redis", "redis", server_hosts=("127.0.0.1",))
    port = free_port(also_free=(1,))
    tls_port = port + 1
    process = _start_node(
        f"redis-tls:{tls_port}", port, workdir / "redis",
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(pair.cert),
        "--tls-key-file", str(pair.key),
        "--tls-ca-cert-file", str(ca.cert_path),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    return RedisTlsServer(RedisServer(port, process), tls_port, ca.cert_path)
