"""`RedisLink`: the lean Redis client of the pod's processes: one pipelined connection to the
one node that holds every key of the agent.

Every key of an agent carries its hash tag `{<namespace>/<agent>}` (docs/architecture.md), so on
Redis Cluster they all live in one slot, on one node. A process of the pod needs neither a
connection pool nor a cluster router: one connection with commands pipelined on it (Redis
answers in order) and hiredis parsing the replies. The proxy's ledger spends two scripts on every
call; how much this saves against a pooled client is measured in docs/benchmarks.md.

Its interface is small: `execute(*args)`, `register_script(source)` (EVALSHA, loading the script
on NOSCRIPT), `ping`, `zrem` and `aclose`. Errors are the `redis.exceptions` classes (with
`key_slot`, all that is used of the redis-py package), so callers catch
`redis.exceptions.RedisError`:

- `ConnectionError`: cannot connect, the connection broke, or a reply took longer than
  `command_timeout`. The connection is then dropped and every command pending on it fails the
  same way; whether such a command ran is unknown (the ledger is built for that). The next
  command connects again, so the link recovers by itself when Redis is back.
- `ResponseError` (`NoScriptError` for NOSCRIPT): an error reply; the connection stays.

TLS (`rediss://`): the server's certificate is verified against the system's CAs, or against
`tls_ca_file` (a PEM bundle). Sentinel (a `redis+sentinel://` URL): on connect the link asks the
Sentinels in turn (logging in with `sentinel_password` when the Sentinels have one) for the
master's address and connects there; a broken connection asks again, and a `READONLY` error (the
node became a replica in a failover; the write did not run) drops the connection, asks again and
resends.

Cluster mode (`cluster=True`): on connect the link asks the URL's node (or the node it used
last) `CLUSTER SLOTS` for the master of the agent's slot and connects there. A `MOVED` reply
means the command did not run: the link moves to the named node and sends it again. An `ASK`
reply (a slot being migrated) is followed once, with `ASKING`, on a short-lived connection.

A connection check (`on_connect`): a coroutine that gets a function sending commands on a new
connection, run once per connection before any other command uses it. If it raises, the
connection is dropped and every pending command fails with its `ConnectionError`: the proxy
uses it to refuse a Redis that may evict the budget ledger's keys.

Timeouts cost no timer per command: one watchdog per connection checks the oldest pending
command, and only while commands are pending.

Limits, on purpose: no connection pool (one connection; a slow command delays those behind
it); no pub/sub, MULTI/EXEC, blocking commands or RESP3 push; on a Cluster, only the one slot of
`slot_key` (a command for a key in another slot gets MOVED and follows it, so it works, at the
cost of a reconnect); no TLS client certificates, and no Sentinel over a different TLS setting
than the master's; replies are parsed by hiredis with default settings (no size limit).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
from redis.crc import key_slot
from redis.exceptions import ConnectionError, NoScriptError, ResponseError

MAX_REDIRECTS = 5
Arg = str | bytes | int | float
SendCommand = Callable[..., Awaitable[Any]]
ConnectionCheck = Callable[[SendCommand], Awaitable[None]]


def encode_command(args: Sequence[Arg]) -> bytes:
    """One command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bool):
            raise TypeError("booleans are not Redis arguments")
        else:
            data = repr(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


@dataclass(frozen=True)
class Endpoint:
    """Where a Redis node listens, and how to log in to it. For Redis Sentinel, `sentinels` and
    `master_name` say whom to ask for the master, which `host`/`port` do not name."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    db: int = 0
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = ""

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        """`redis[s]://[[user]:password@]host[:port][/db]`, or for Sentinel
        `redis[s]+sentinel://[[user]:password@]host[:port][,host[:port]...]/<master>[/db]`
        (the credentials are the master's; the Sentinels' own password is `sentinel_password` of
        `RedisLink`)."""
        parts = urlsplit(url)
        if parts.scheme in ("redis+sentinel", "rediss+sentinel"):
            return cls._sentinel_url(
                url, parts.scheme.startswith("rediss"), parts.netloc, parts.path
            )
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(
                f"redis URL must start with redis://, rediss:// or redis+sentinel://, not {url!r}"
            )
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"redis URL database must be a number, not {path!r}")
        return cls(
            host=parts.hostname or "localhost",
            port=parts.port or 6379,
            tls=parts.scheme == "rediss",
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            db=int(path) if path else 0,
        )

    @classmethod
    def _sentinel_url(cls, url: str, tls: bool, netloc: str, path: str) -> Endpoint:
        credentials, _, hosts = netloc.rpartition("@")
        username, _, password = credentials.partition(":")
        sentinels = []
        for host_port in hosts.split(","):
            host, _, port = host_port.rpartition(":") if ":" in host_port else (host_port, "", "")
            if not host or (port and not port.isdigit()):
                raise ValueError(f"redis sentinel URL: bad host {host_port!r} in {url!r}")
            sentinels.append((host, int(port) if port else 26379))
        name, _, db = path.strip("/").partition("/")
        if not name:
            raise ValueError(f"redis sentinel URL must name the master: .../<master>, not {url!r}")
        if db and not db.isdigit():
            raise ValueError(f"redis URL database must be a number, not {db!r}")
        return cls(
            host=sentinels[0][0],
            port=sentinels[0][1],
            tls=tls,
            username=unquote(username) or None,
            password=unquote(password) or None,
            db=int(db) if db else 0,
            sentinels=tuple(sentinels),
            master_name=name,
        )

    def at(self, host: str, port: int) -> Endpoint:
        """The same credentials on another node (cluster nodes and a Sentinel's master)."""
        return Endpoint(host, port, self.tls, self.username, self.password, self.db)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class _Connection(asyncio.Protocol):
    """One connection: pipelined commands, replies matched in order."""

    def __init__(self, endpoint: Endpoint, command_timeout: float) -> None:
        self.endpoint = endpoint
        self.command_timeout = command_timeout
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._watchdog: asyncio.TimerHandle | None = None
        self._lost_reason = "connection closed"

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                future, _ = self._pending.popleft()
                if not future.done():  # a cancelled caller still consumed its reply
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as error:
            self.abort(f"unreadable reply from Redis {self.endpoint}: {error!r}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        reason = self._lost_reason if exc is None else f"{self._lost_reason}: {exc}"
        while self._pending:
            future, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(ConnectionError(f"Redis {self.endpoint}: {reason}"))

    # --- commands -----------------------------------------------------------------------------

    def send(self, payload: bytes, commands: int = 1) -> list[asyncio.Future[Any]]:
        """Write `commands` encoded commands at once; a future for each reply."""
        if self.closed or self.transport is None:
            raise ConnectionError(f"Redis {self.endpoint}: connection closed")
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        futures = [loop.create_future() for _ in range(commands)]
        self._pending.extend((future, now) for future in futures)
        self.transport.write(payload)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.command_timeout, self._check_timeouts)
        return futures

    def abort(self, reason: str) -> None:
        self._lost_reason = reason
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _check_timeouts(self) -> None:
        self._watchdog = None
        if not self._pending or self.closed:
            return
        oldest = self._pending[0][1]
        late = time.monotonic() - oldest - self.command_timeout
        if late >= 0:
            self.abort(f"no reply within {self.command_timeout:g}s")
            return
        loop = asyncio.get_running_loop()
        self._watchdog = loop.call_later(-late, self._check_timeouts)


class LinkScript:
    """A Lua script run by EVALSHA; loaded with SCRIPT LOAD when the node does not know it."""

    def __init__(self, link: RedisLink, source: str) -> None:
        self.link = link
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()  # EVALSHA

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        command = ("EVALSHA", self.sha, len(keys), *keys, *args)
        try:
            return await self.link.execute(*command)
        except NoScriptError:
            await self.link.execute("SCRIPT", "LOAD", self.source)
            return await self.link.execute(*command)


class RedisLink:
    """A pipelined connection to the node holding `slot_key`'s slot (any node when not cluster)."""

    def __init__(
        self,
        url: str,
        *,
        cluster: bool = False,
        slot_key: str = "",
        connect_timeout: float = 2.0,
        command_timeout: float = 5.0,
        on_connect: ConnectionCheck | None = None,
        sentinel_password: str | None = None,
        tls_ca_file: str | None = None,
    ) -> None:
        self.seed = Endpoint.from_url(url)
        self.sentinel_password = sentinel_password
        self._tls: ssl.SSLContext | None = None
        if self.seed.tls:
            # Built once: loading the CAs is the costly part of a TLS connection's set-up.
            self._tls = ssl.create_default_context(cafile=tls_ca_file)
        elif tls_ca_file is not None:
            raise ValueError("a TLS CA file needs a rediss:// URL (TLS); this URL is plain TCP")
        self.on_connect = on_connect
        self.cluster = cluster
        self.slot = key_slot(slot_key.encode())
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._node = self.seed
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()

    @property
    def node(self) -> Endpoint:
        """The node the link talks to (in cluster mode: the master of the slot, last known)."""
        return self._node

    def register_script(self, source: str) -> LinkScript:
        return LinkScript(self, source)

    async def ping(self) -> bool:
        return bool(await self.execute("PING") == b"PONG")

    async def zrem(self, key: str, *members: Arg) -> int:
        return int(await self.execute("ZREM", key, *members))

    async def execute(self, *args: Arg) -> Any:
        """Send one command and return its reply; error replies raise (see the module doc)."""
        payload = encode_command(args)
        for _ in range(MAX_REDIRECTS + 1):
            connection = await self._connected()
            (future,) = connection.send(payload)
            reply = await future
            if not isinstance(reply, ResponseError):
                return reply
            message = str(reply)
            if message.startswith("MOVED ") and self.cluster:
                self._move_to(message)
                continue
            if message.startswith("ASK ") and self.cluster:
                return await self._ask(message, payload)
            if message.startswith("READONLY") and self.seed.sentinels:
                # A failover made our node a replica; the write was refused, not run: ask the
                # Sentinels for the new master and send it there.
                self._drop(f"{self._node} is a replica now")
                continue
            if message.startswith("NOSCRIPT"):
                raise NoScriptError(message)
            raise reply
        raise ConnectionError(f"Redis Cluster redirected more than {MAX_REDIRECTS} times")

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.abort("closed by the proxy")
            self._connection = None

    # --- connecting ---------------------------------------------------------------------------

    async def _connected(self) -> _Connection:
        connection = self._connection
        if connection is not None and not connection.closed:
            return connection
        async with self._connecting:
            connection = self._connection
            if connection is None or connection.closed:
                connection = await self._connect_to_slot_owner()
                if self.on_connect is not None:
                    await self._check(connection, self.on_connect)
                self._connection = connection
            return connection

    @staticmethod
    async def _check(connection: _Connection, check: ConnectionCheck) -> None:
        async def send(*args: Arg) -> Any:
            (future,) = connection.send(encode_command(args))
            return await future

        try:
            await check(send)
        except BaseException:
            connection.abort("the connection check failed")
            raise

    async def _connect_to_slot_owner(self) -> _Connection:
        if self.seed.sentinels:
            return await self._connect_to_sentinels_master()
        if not self.cluster:
            return await self._open(self.seed)
        errors = []
        for candidate in dict.fromkeys((self._node, self.seed)):
            try:
                connection = await self._open(candidate)
                owner = await self._slot_owner(connection)
            except (ConnectionError, ResponseError, OSError) as error:
                errors.append(f"{candidate}: {error}")
                continue
            if owner == candidate:
                self._node = candidate
                return connection
            connection.abort("not the slot's master")
            self._node = owner
            return await self._open(owner)
        raise ConnectionError("no Redis Cluster node answered: " + "; ".join(errors))

    async def _connect_to_sentinels_master(self) -> _Connection:
        """Ask each Sentinel in turn for the master's address; connect there."""
        errors = []
        for host, port in self.seed.sentinels:
            # The Sentinels have their own password (`requirepass` in sentinel.conf), if any.
            sentinel = Endpoint(host, port, self.seed.tls, password=self.sentinel_password)
            try:
                connection = await self._open(sentinel)
                try:
                    (future,) = connection.send(
                        encode_command(
                            ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.seed.master_name)
                        )
                    )
                    address = await future
                finally:
                    connection.abort("asked the Sentinel")
            except (ConnectionError, OSError) as error:
                errors.append(f"{sentinel}: {error}")
                continue
            if isinstance(address, ResponseError) or not address:
                errors.append(f"{sentinel}: no master named {self.seed.master_name!r} ({address})")
                continue
            self._node = self.seed.at(address[0].decode(), int(address[1]))
            return await self._open(self._node)
        raise ConnectionError("no Redis Sentinel named the master: " + "; ".join(errors))

    async def _slot_owner(self, connection: _Connection) -> Endpoint:
        (future,) = connection.send(encode_command(("CLUSTER", "SLOTS")))
        ranges = await future
        if isinstance(ranges, ResponseError):
            raise ranges
        for start, end, master, *_ in ranges:
            if start <= self.slot <= end:
                host = master[0].decode() or connection.endpoint.host
                return connection.endpoint.at(host, int(master[1]))
        raise ConnectionError(f"Redis Cluster: no node serves slot {self.slot}")

    async def _open(self, endpoint: Endpoint) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(endpoint, self.command_timeout),
                    endpoint.host,
                    endpoint.port,
                    ssl=self._tls if endpoint.tls else None,
                )
                await self._log_in(connection)
        except (OSError, TimeoutError) as error:
            raise ConnectionError(f"cannot connect to Redis {endpoint}: {error!r}") from None
        return connection

    @staticmethod
    async def _log_in(connection: _Connection) -> None:
        endpoint = connection.endpoint
        commands: list[tuple[Arg, ...]] = []
        if endpoint.password is not None:
            user = (endpoint.username,) if endpoint.username else ()
            commands.append(("AUTH", *user, endpoint.password))
        if endpoint.db:
            commands.append(("SELECT", endpoint.db))
        if not commands:
            return
        payload = b"".join(encode_command(command) for command in commands)
        for future in connection.send(payload, len(commands)):
            reply = await future
            if isinstance(reply, ResponseError):
                connection.abort("login refused")
                raise ConnectionError(f"Redis {endpoint} refused the login: {reply}")

    # --- cluster redirects --------------------------------------------------------------------

    def _move_to(self, message: str) -> None:
        self._node = self._redirect_target(message)
        self._drop(f"slot moved to {self._node}")

    def _drop(self, reason: str) -> None:
        if self._connection is not None:
            self._connection.abort(reason)
            self._connection = None

    async def _ask(self, message: str, payload: bytes) -> Any:
        connection = await self._open(self._redirect_target(message))
        try:
            asking, future = connection.send(encode_command(("ASKING",)) + payload, 2)
            await asking
            reply = await future
        finally:
            connection.abort("ASK redirect done")
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def _redirect_target(self, message: str) -> Endpoint:
        # "MOVED 3999 127.0.0.1:6381" / "ASK 3999 127.0.0.1:6381"
        address = message.split()[2]
        host, _, port = address.rpartition(":")
        return self.seed.at(host or self._node.host, int(port))
