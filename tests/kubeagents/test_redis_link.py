"""RedisLink, the proxy's pipelined Redis client, against real redis-servers and a real Cluster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import redis.exceptions

from harness.processes import wait_for
from harness.redis_servers import (
    RedisClusterNodes,
    start_redis,
    start_redis_sentinel,
    start_redis_tls,
)
from kubeagents.redis_link import Endpoint, RedisLink, encode_command

T = TypeVar("T")


def run_with(link: RedisLink, scenario: Callable[[RedisLink], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await scenario(link)
        finally:
            await link.aclose()

    return asyncio.run(main())


def test_commands_sent_at_once_get_their_own_replies(redis_url: str) -> None:
    async def scenario(link: RedisLink) -> list[object]:
        return list(await asyncio.gather(*(link.execute("ECHO", f"n{i}") for i in range(500))))

    replies = run_with(RedisLink(redis_url), scenario)
    assert replies == [f"n{i}".encode() for i in range(500)]


def test_an_error_reply_raises_and_the_connection_stays(redis_url: str) -> None:
    async def scenario(link: RedisLink) -> tuple[str, object, int]:
        await link.execute("SET", "text", "not a number")
        with pytest.raises(redis.exceptions.ResponseError) as raised:
            await link.execute("INCR", "text")
        connection = link._connection
        after = await link.execute("GET", "text")
        assert link._connection is connection, "an error reply must not drop the connection"
        return str(raised.value), after, await link.zrem("nothing", "x")

    message, after, removed = run_with(RedisLink(redis_url), scenario)
    assert "not an integer" in message
    assert after == b"not a number"
    assert removed == 0


def test_a_script_is_loaded_again_when_the_server_forgot_it(
    redis_url: str, redis_client: redis.Redis
) -> None:
    source = "return redis.call('INCRBY', KEYS[1], ARGV[1])"

    async def scenario(link: RedisLink) -> tuple[int, int]:
        script = link.register_script(source)
        first = await script(keys=["counter"], args=[5])
        redis_client.script_flush()
        second = await script(keys=["counter"], args=[7])  # NOSCRIPT -> SCRIPT LOAD -> EVALSHA
        return first, second

    assert run_with(RedisLink(redis_url), scenario) == (5, 12)
    assert redis_client.get("counter") == b"12"


def test_redis_down_fails_fast_and_the_link_recovers_by_itself(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis")
    url = server.url

    async def scenario(link: RedisLink) -> bytes:
        assert await link.ping()
        server.stop()
        with pytest.raises(redis.exceptions.ConnectionError, match=f"127.0.0.1:{server.port}"):
            await link.execute("PING")
        with pytest.raises(redis.exceptions.ConnectionError, match="cannot connect"):
            await link.execute("PING")
        restarted = start_redis(tmp_path / "redis", port=server.port)
        try:
            await link.execute("SET", "back", "yes")
            value: bytes = await link.execute("GET", "back")
            return value
        finally:
            restarted.stop()

    assert run_with(RedisLink(url, connect_timeout=1.0), scenario) == b"yes"


def test_no_reply_within_the_command_timeout_drops_the_connection(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario(link: RedisLink) -> bytes:
        await link.execute("SET", "k", "v")
        redis_client.client_pause(1500)
        started = time.monotonic()
        pending = [asyncio.ensure_future(link.execute("GET", "k")) for _ in range(3)]
        results = await asyncio.gather(*pending, return_exceptions=True)
        waited = time.monotonic() - started
        for result in results:
            assert isinstance(result, redis.exceptions.ConnectionError), result
            assert "no reply within 0.3s" in str(result)
        assert waited < 1.4, f"the timeout fired after {waited:.2f}s, not ~0.3s"

        async def answers() -> bool:
            try:
                return bool(await link.execute("GET", "k") == b"v")
            except redis.exceptions.ConnectionError:
                return False  # still paused

        deadline = time.monotonic() + 10
        while not await answers():
            assert time.monotonic() < deadline, "the link did not recover after the pause"
            await asyncio.sleep(0.05)
        value: bytes = await link.execute("GET", "k")
        return value

    assert run_with(RedisLink(redis_url, command_timeout=0.3), scenario) == b"v"


def test_password_and_database_come_from_the_url(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis")
    try:
        with server.client() as admin:
            admin.config_set("requirepass", "s3cret")
        url = f"redis://:s3cret@127.0.0.1:{server.port}/3"

        async def scenario(link: RedisLink) -> None:
            await link.execute("SET", "where", "db3")

        run_with(RedisLink(url), scenario)
        with redis.Redis(port=server.port, password="s3cret", db=3) as db3:
            assert db3.get("where") == b"db3"

        async def refused(link: RedisLink) -> None:
            with pytest.raises(redis.exceptions.ConnectionError, match="refused the login"):
                await link.execute("PING")

        run_with(RedisLink(f"redis://:wrong@127.0.0.1:{server.port}/0"), refused)
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:6379", "must start with redis://"),
        ("redis://127.0.0.1:6379/zero", "database must be a number"),
    ],
)
def test_a_bad_url_is_refused_with_the_reason(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Endpoint.from_url(url)


def test_commands_are_encoded_as_resp_arrays() -> None:
    assert (
        encode_command(("SET", b"k\r\n", 12)) == b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n12\r\n"
    )
    with pytest.raises(TypeError):
        encode_command(("SET", "k", True))


# --- Redis Cluster ---------------------------------------------------------------------------


def command(node: redis.Redis, *args: str | int) -> Any:
    return node.execute_command(*args)  # type: ignore[no-untyped-call]


def slot_owner_port(cluster: RedisClusterNodes, key: str) -> int:
    with cluster.cluster_client() as client:
        node = client.get_node_from_key(key)
        return int(node.port)


def test_cluster_link_talks_to_the_slot_owner_from_any_seed(
    redis_cluster: RedisClusterNodes,
) -> None:
    key = "kubeagents:{team/research}:ledger"
    owner = slot_owner_port(redis_cluster, key)
    for port in redis_cluster.ports:

        async def scenario(link: RedisLink, seed: int = port) -> int:
            await link.execute("SET", key, f"via {seed}")
            return link.node.port

        link = RedisLink(f"redis://127.0.0.1:{port}", cluster=True, slot_key=key)
        assert run_with(link, scenario) == owner
    with redis_cluster.cluster_client() as client:
        assert client.get(key) == f"via {redis_cluster.ports[-1]}".encode()


def test_cluster_link_follows_a_moved_slot(redis_cluster: RedisClusterNodes) -> None:
    key = "kubeagents:{moving/agent}:ledger"
    with redis_cluster.cluster_client() as client:
        slot = client.keyslot(key)
    owner = slot_owner_port(redis_cluster, key)
    target = next(port for port in redis_cluster.ports if port != owner)
    nodes = {port: redis.Redis(port=port) for port in redis_cluster.ports}
    node_id = {port: command(client, "CLUSTER", "MYID").decode() for port, client in nodes.items()}

    def assign(to: int) -> None:
        for port in [to, *(p for p in redis_cluster.ports if p != to)]:
            command(nodes[port], "CLUSTER", "SETSLOT", slot, "NODE", node_id[to])

        def owner_seen_by(port: int) -> int:
            for start, end, master, *_ in command(nodes[port], "CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
            return -1

        def everyone_agrees() -> bool:
            return all(owner_seen_by(port) == to for port in redis_cluster.ports)

        wait_for(everyone_agrees, timeout=10, what=f"slot {slot} to be served by {to}")

    async def scenario(link: RedisLink) -> int:
        await link.execute("PING")
        assert link.node.port == owner
        assign(target)  # the slot is empty, so it can be handed over at once
        await link.execute("SET", key, "after the move")  # MOVED -> reconnect -> resend
        return link.node.port

    try:
        link = RedisLink(f"redis://127.0.0.1:{owner}", cluster=True, slot_key=key)
        assert run_with(link, scenario) == target
        assert nodes[target].get(key) == b"after the move"
    finally:
        nodes[target].delete(key)
        assign(owner)
        for client in nodes.values():
            client.close()


# --- Redis Sentinel --------------------------------------------------------------------------


@pytest.mark.integration
def test_a_sentinel_url_reaches_the_master_and_follows_a_failover(tmp_path: Path) -> None:
    setup = start_redis_sentinel(tmp_path)
    try:

        async def before(link: RedisLink) -> int:
            await link.execute("SET", "k", "before")
            return link.node.port

        link = RedisLink(setup.url)
        assert link.seed.master_name == "kubeagents"

        async def scenario(link: RedisLink) -> tuple[int, int, bytes]:
            first = await before(link)
            sentinel = setup.sentinel_client()
            replica = setup.replica.client()
            wait_for(
                lambda: replica.info("replication")["master_link_status"] == "up",
                timeout=20,
                what="the replica to sync",
            )
            sentinel.execute_command("SENTINEL", "FAILOVER", "kubeagents")  # type: ignore[no-untyped-call]

            def promoted() -> bool:
                address = sentinel.execute_command(  # type: ignore[no-untyped-call]
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "kubeagents"
                )
                return int(address[1]) == setup.replica.port

            wait_for(promoted, timeout=30, what="the Sentinel to promote the replica")
            deadline = time.monotonic() + 30
            while True:  # the old master may still accept writes until it is reconfigured
                try:
                    await link.execute("SET", "k", "after")
                    if link.node.port == setup.replica.port:
                        break
                except redis.exceptions.ConnectionError:
                    pass
                assert time.monotonic() < deadline, "the link did not follow the failover"
                await asyncio.sleep(0.1)
            value: bytes = await link.execute("GET", "k")
            return first, link.node.port, value

        first, after, value = run_with(link, scenario)
        assert first == setup.master.port
        assert after == setup.replica.port
        assert value == b"after"
    finally:
        setup.stop()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis+sentinel://127.0.0.1:26379", "must name the master"),
        ("redis+sentinel://127.0.0.1:x/main", "bad host"),
        ("redis+sentinel://127.0.0.1/main/zero", "database must be a number"),
    ],
)
def test_a_bad_sentinel_url_is_refused_with_the_reason(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Endpoint.from_url(url)


def test_a_sentinel_url_names_every_sentinel_the_master_and_the_masters_login() -> None:
    endpoint = Endpoint.from_url("redis+sentinel://:s3cret@10.0.0.1,10.0.0.2:26380/main/2")
    assert endpoint.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert (endpoint.master_name, endpoint.password, endpoint.db) == ("main", "s3cret", 2)


@pytest.mark.integration
def test_a_sentinel_with_a_password_is_asked_with_it(tmp_path: Path) -> None:
    setup = start_redis_sentinel(tmp_path, sentinel_password="sentinel-secret")
    try:

        async def set_and_get(link: RedisLink) -> bytes:
            await link.execute("SET", "k", "through the sentinel")
            value: bytes = await link.execute("GET", "k")
            return value

        with_password = RedisLink(setup.url, sentinel_password="sentinel-secret")
        assert run_with(with_password, set_and_get) == b"through the sentinel"
        assert with_password.node.port == setup.master.port

        without = RedisLink(setup.url)
        with pytest.raises(redis.exceptions.ConnectionError, match="NOAUTH"):
            run_with(without, set_and_get)
        wrong = RedisLink(setup.url, sentinel_password="wrong")
        with pytest.raises(redis.exceptions.ConnectionError, match="refused the login"):
            run_with(wrong, set_and_get)
    finally:
        setup.stop()


@pytest.mark.integration
def test_tls_is_verified_with_the_ca_file(tmp_path: Path) -> None:
    server = start_redis_tls(tmp_path)
    try:

        async def ping(link: RedisLink) -> Any:
            return await link.execute("PING")

        trusted = RedisLink(server.tls_url, tls_ca_file=str(server.ca_file))
        assert run_with(trusted, ping) == b"PONG"
        untrusted = RedisLink(server.tls_url)  # the system's CAs do not know the throw-away CA
        with pytest.raises(redis.exceptions.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            run_with(untrusted, ping)
    finally:
        server.stop()


def test_a_ca_file_for_a_plain_url_is_refused() -> None:
    with pytest.raises(ValueError, match=r"a TLS CA file needs a rediss:// URL"):
        RedisLink("redis://127.0.0.1:6379/0", tls_ca_file="/etc/ssl/certs/ca-certificates.crt")
