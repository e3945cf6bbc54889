"""The harness's fixtures are the real programs, not stand-ins, and fail loudly when absent."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from harness.binaries import tool
from harness.processes import HarnessError, ManagedProcess, wait_for
from harness.redis_servers import RedisClusterNodes, RedisServer, start_redis


def test_redis_fixture_is_a_real_redis_server_process(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    info = redis_client.info("server")
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(info["redis_version"]))
    assert info["process_id"] == redis_server.process.pid
    assert info["tcp_port"] == redis_server.port


class TestRedisStateIsResetBetweenTests:
    """Run in file order: the second test sees none of the first one's keys."""

    def test_first_writes_a_key(self, redis_client: redis.Redis) -> None:
        redis_client.set("left-behind", "1")
        assert redis_client.dbsize() == 1

    def test_second_starts_empty(self, redis_client: redis.Redis) -> None:
        assert redis_client.dbsize() == 0


def test_redis_cluster_fixture_is_a_real_three_node_cluster(
    redis_cluster: RedisClusterNodes,
) -> None:
    for node in redis_cluster.node_clients():
        with node:
            info = node.cluster("INFO")
            assert info["cluster_state"] == "ok"
            assert info["cluster_known_nodes"] == "3"
    with redis_cluster.cluster_client() as cluster:
        # Keys sharing a hash tag live in one slot, so one script can touch them all ...
        tagged = ["{agent:research}:a", "{agent:research}:b"]
        script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])"
        assert cluster.eval(script, 2, *tagged, "x") == 1
    # ... while a node of the real cluster refuses untagged keys that hash to different slots.
    with (
        redis_cluster.node_clients()[0] as node,
        pytest.raises(redis.ResponseError, match="hash to the same slot"),
    ):
        node.eval(script, 2, "agent-a", "agent-b", "x")


def test_helm_fixture_is_helm_v4(helm: Path) -> None:
    out = subprocess.run([helm, "version", "--short"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("v4."), out.stdout


def test_kubectl_fixture_is_kubectl_v1_35(kubectl: Path) -> None:
    out = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, check=True
    )
    client = json.loads(out.stdout)["clientVersion"]
    assert (client["major"], client["minor"]) == ("1", "35")
    assert client["gitVersion"].startswith("v1.35.")


def test_a_missing_tool_fails_with_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEAGENTS_TOOLS_DIR", "/nonexistent")
    with pytest.raises(HarnessError, match=r"helm not found at /nonexistent/helm.*make tools"):
        tool("helm")


def test_missing_redis_server_fails_with_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HarnessError, match=r"redis-server not found.*apt-get install"):
        start_redis(tmp_path)


def test_a_process_that_dies_at_start_fails_fast_with_its_log(tmp_path: Path) -> None:
    process = ManagedProcess(
        "dies", [sys.executable, "-c", "print('boom', flush=True); raise SystemExit(3)"],
        tmp_path / "dies.log",
    )  # fmt: skip
    with pytest.raises(HarnessError, match=r"(?s)exited with 3.*boom"):
        process.wait_for_log("never printed", timeout=30)
    process.stop()


def test_wait_for_names_what_it_waited_for_and_the_last_error() -> None:
    def never() -> None:
        raise ConnectionRefusedError("nothing listens")

    with pytest.raises(HarnessError, match=r"waiting for the thing.*nothing listens"):
        wait_for(never, timeout=0.1, what="the thing")
