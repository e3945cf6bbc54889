"""The rolling budget ledger in Redis: reserve before a call, settle after it.

One ledger lives under one Redis Cluster hash tag, and every key of it starts with its prefix:

- an agent's ledger: `kubeagents:{<namespace>/<agent>}:` (`BudgetLedger.for_agent`), the same
  tag as every other key of the agent; its scope is `agent`;
- a team run's ledger: `kubeagents:{<namespace>/run:<run-id>}:` (`BudgetLedger.for_run`), shared
  by every agent (and every proxy) of the run; its scope is `run`. On Redis Cluster it may live on
  another node than the agent's keys, so the proxy reaches it through a `RedisLink` of its own.

A ledger may hold several scopes (`Scope.name`); one call can name several of them at once (they
share the prefix, so the slot), and is then reserved in all of them or in none.

Every proxy replica shares the ledger in Redis, so spend can never exceed the configured budget:
not under concurrency (each operation is one Lua script, atomic in Redis), not across replicas
(they share the keys), not across crashes (a reservation that is never settled is charged in
full once it expires).

Exceptions (all subclasses of `LedgerError`):

- `BudgetExceeded`: `reserve()` refused; nothing was reserved. Carries the scope and kind
  ("tokens"/"usd") that failed with limit, used, reserved, requested, `retry_after` (whole
  seconds >= 1, or None) and `never_fits`.
- `LimitMismatch`: `reserve()` named limits for a scope with fixed limits (`Scope.fixed_limits`)
  other than the ones stored by the first call; nothing was reserved. Carries `scope`,
  `stored_token_limit`, `stored_usd_nanos_limit` (None: unlimited).
- `Unpriced`: `reserve(usd_nanos=None)` (a call without a price) in a scope with a dollar limit
  (given, or stored); nothing was reserved. Carries `scope`.
- `LedgerUnavailable`: Redis could not be reached or did not answer in time (the
  `redis.exceptions` classes `RedisLink` raises, or an OS-level socket error, wrapped; the
  original is `__cause__`). The proxy fails closed on it (503). Whether a `reserve()` that raised
  it took effect is unknown: it carries that reservation (`unconfirmed`) so that the caller can
  release it (`settle` with zero); if nobody does, it expires and is charged in full, so budget
  can be over-counted, never leaked. Also raised (`unconfirmed` set) when `durable_replicas` did
  not acknowledge a reservation in time (see "Durability"), and (`unconfirmed` None) by a
  `reserve()` whose id already has a tombstone (it was settled: nothing is reserved again).

`ValueError` (naming the argument) is raised for bad input before Redis is touched.

Amounts: tokens and US dollars as integer nano-dollars (`usd_nanos`, 1e-9 USD). Every amount
and limit is an int in [0, 2**53 - 1], because Lua numbers are doubles.

Key layout. Each scope has six keys, `<prefix><scope>:<suffix>`:

| suffix | type | content |
|---|---|---|
| `totals` | hash | `used_tokens`, `used_usd`, `reserved_tokens`, `reserved_usd`; `limits` |
| `buckets` | hash | spend per bucket: `<bucket start s>:tokens`, `<bucket start s>:usd` |
| `bucket_starts` | zset | member and score: the start (unix s) of every bucket holding spend |
| `reservations` | hash | outstanding reservation id -> `"<tokens> <usd_nanos>"` |
| `reservation_expiry` | zset | outstanding reservation id, score: its expiry (unix ms) |
| `settled` | zset | tombstones: reservation id, score: the moment (unix ms) it may be forgotten |

`totals` holds the running totals, and for a scope with fixed limits once they are stored
`limits`: `"<tokens or -> <usd_nanos or ->"` (`-`: unlimited), e.g. `"200000 -"`.

All six keys of a scope get the same absolute expiry (PEXPIREAT) on every write:
`max(now, latest reservation expiry) + window + bucket + 60 s`, the moment after which nothing
in them can count any more. So an idle ledger disappears by itself, its stored limits and
tombstones with it (a tombstone never keeps keys alive: with a window shorter than ten minutes it
goes with them before its time).

Algorithm. Time is Redis's (`TIME` inside the script), never a replica's clock. Spend goes into
the bucket `floor(now / bucket) * bucket`; a bucket counts until its whole span is older than
the window, i.e. it leaves at `start + bucket + window`, so spend counts for between `window`
and `window + bucket` seconds (never shorter than the window: the conservative side). Every
operation first sweeps each scope it touches: reservations past their expiry are turned into a
charge of their full reserved amounts, recorded in the bucket of their *expiry time* (the same
bucket whichever later call sweeps them, and in every scope of the reservation), and leave a
tombstone for ten minutes; then buckets that left the window are subtracted from the running
totals and deleted (a zset range, usually 0 or 1 bucket), and so are tombstones past their time.
So no call sums the buckets; it reads the running totals of each scope once (one HMGET) and
writes them back once (one HSET) when they changed.

A reservation is recorded in each of its scopes, with one expiry. A scope is swept by every
call that names it; a scope that no call names any more is charged (in the same expiry bucket)
by the next call that names it, or its keys expire. Every operation on a reservation sweeps all
of its scopes first, so its scopes never disagree.

Settling and tombstones. `settle()` replaces a reservation by the real usage (charged in full,
even above the amount reserved) into the current bucket, and leaves a tombstone kept until
max(now, the reservation's expiry) + 10 minutes. It has three outcomes (`SettleOutcome`):
`SETTLED` (the reservation was there); `ALREADY_SETTLED` (a tombstone was there: settled
before, or expired and charged in full by a sweep; nothing changes); and
`RECORDED_WITHOUT_RESERVATION` (neither was there: the reservation was lost, e.g. Redis restarted
empty, a failover to a replica that had not received it, or its keys were evicted; the real usage
is charged anyway, and a tombstone makes a repeat a no-op). So settle is idempotent, and no real
usage is ever dropped. `reserve()` is idempotent by its id too (`reservation_id`, generated when
not given): a second reserve of an id that is outstanding returns it and reserves nothing more;
of an id with a tombstone (settled, e.g. a caller released an unconfirmed reservation before a
delayed copy of its reserve arrived) reserves nothing and raises `LedgerUnavailable`.

Fixed limits. A scope with `fixed_limits` (a team run's budget) takes its limits from the first
`reserve()` that names it with at least one limit: they are stored (field `limits` of `totals`)
even when that reserve is then refused, and are the enforced limits from then on. A later reserve
that names no limit (both None) gets the stored ones; one that names other limits than the
stored ones is refused with `LimitMismatch`. `snapshot()` reports the stored limits of such a
scope. The stored limits expire with the scope's other keys (an idle run forgets them).

Unpriced calls. `reserve(usd_nanos=None)`: the call has no price. Refused with `Unpriced` when a
scope has a dollar limit (given, or stored); otherwise it reserves 0 USD.

Clamping and healing. Every number the script reads from Redis (totals, buckets, reservation
records) is clamped to an integer >= 0, and every total it writes is >= 0, so `used` and
`reserved` are never negative, whatever was evicted or deleted. Totals that are missing or hold
anything but such an integer are rebuilt from the buckets and the reservations; used spend with
no bucket left is zero; buckets that lost their index (`bucket_starts`) are indexed again;
reserved amounts with no reservation left are zero; reservations that lost their expiry are
charged in full at once. Whatever is lost, the ledger errs on the side of counting too much
(never too little) of what is still in Redis.

Durability (`durable_replicas`). Redis replicates asynchronously: a failover to a replica (Redis
Sentinel, or a Cluster replica promoted) loses the writes of its master's last moments. Without
WAIT, such a failover can lose: reservations of calls in flight (the new master does not know
them, so it admits other calls against budget they had reserved: an overshoot of up to what they
spend; their settles then find neither the reservation nor a tombstone and charge the real usage
as `RECORDED_WITHOUT_RESERVATION`, so their usage is not dropped); calls reserved and settled
entirely within those moments (their usage is gone from the ledger); run limits stored then (the
next call that names limits fixes them again); and tombstones (a repeated settle is charged again:
over-counted). With `durable_replicas` N > 0, every successful `reserve()` is followed by
`WAIT N durable_timeout_ms`, pipelined right behind the EVALSHA on the link's one connection (no
extra round trip: the master answers WAIT as soon as N replicas acknowledged the reservation), so
the call goes upstream only once its reservation is on N replicas; a failover to one of them keeps
it, and a settle lost in that failover leaves it to be charged in full at its expiry (never less
than was used). When fewer than N replicas acknowledged in time, or the acknowledgement cannot be
trusted (the link moved to another node between the script and WAIT), the reservation is
released (settled with zero: its tombstone makes that final) and `reserve()` raises
`LedgerUnavailable` with it as `unconfirmed`. Limits of this: settles are not waited for (lost,
they over-count, as above); a failover to a replica that was not among the N acknowledging ones
still loses the reservation; while Redis Cluster migrates the ledger's slot (an ASK redirect) the
script runs on another connection than the WAIT, which then cannot vouch for it (RedisLink does
not tell); and WAIT holds up the commands pipelined behind it on the link for up to
`durable_timeout_ms` when replicas are slow. Without replicas to wait for (N = 0) nothing is sent
beyond the EVALSHA.

`retry_after` of a refused request (per scope and kind, with limit L, used U, reserved R,
requested r; the reported refusal is the worst of all failing checks: `never_fits` first, then
the longest `retry_after`):

- r > L: it can never fit: `retry_after=None`, `never_fits=True`.
- U + r <= L (blocked only by outstanding reservations): the earliest reservation expiry (by
  then it has been settled or charged), or sooner if enough spend ages out before that.
- U + R + r - L <= U: walk the buckets oldest first, adding up their spend, until it reaches
  U + R + r - L: the moment that bucket leaves the window.
- otherwise (R + r > L): the later of "all used spend has aged out" and the earliest
  reservation expiry.

Rounded up to whole seconds, at least 1. It assumes nothing new is spent meanwhile.

Each operation is one EVALSHA round trip (plus the pipelined WAIT of a durable reserve); the
script (ledger.lua, shipped in this package) is sent with SCRIPT LOAD only when a server does not
know it yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, NoReturn

from redis.exceptions import NoScriptError, RedisError

from kubeagents.agent import agent_key
from kubeagents.redis_link import RedisLink
from kubeagents_proxy.errors import (
    BudgetExceeded,
    LedgerError,
    LedgerUnavailable,
    LimitMismatch,
    Unpriced,
)

MAX_AMOUNT = 2**53 - 1
"""The largest amount or limit: Lua numbers are doubles, exact only below 2**53."""

MAX_TTL_SECONDS = 7 * 86400
"""The longest reservation ttl accepted."""

SCOPE_SUFFIXES = (
    "totals",
    "buckets",
    "bucket_starts",
    "reservations",
    "reservation_expiry",
    "settled",
)

KINDS = ("tokens", "usd")

AGENT_SCOPE = "agent"
"""The scope of an agent's own budget in its ledger (`BudgetLedger.for_agent`)."""

RUN_SCOPE = "run"
"""The scope of a team run's budget in the run's ledger (`BudgetLedger.for_run`)."""

_SCOPE_NAME = re.compile(r"[A-Za-z0-9:._/-]{1,200}")
_NAME_PART = re.compile(r"[A-Za-z0-9._-]{1,253}")
_RUN_ID = re.compile(r"[A-Za-z0-9._/-]{1,150}")
_PREFIX = re.compile(r"[^{}\s]*\{[^{}\s]+\}[^{}\s]*")
_RESERVATION_ID = re.compile(r"[0-9a-f]{32}")


def _load_script() -> str:
    return resources.files(__package__).joinpath("ledger.lua").read_text(encoding="utf-8")


LEDGER_LUA = _load_script()


# --- values ----------------------------------------------------------------------------------


def _check_amount(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, not {value!r}")
    if not 0 <= value <= MAX_AMOUNT:
        raise ValueError(f"{name} must be between 0 and 2**53 - 1, not {value}")


def _check_ttl(name: str, value: object) -> int:
    """The ttl in whole milliseconds (rounded up)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds, not {value!r}")
    if not (math.isfinite(value) and 0 < value <= MAX_TTL_SECONDS):
        raise ValueError(f"{name} must be > 0 and <= {MAX_TTL_SECONDS} seconds, not {value}")
    return max(1, math.ceil(value * 1000))


def _check_positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, not {value!r}")
    return value


def _check_name(name: str, value: object, pattern: re.Pattern[str], shape: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{name} must match {shape}, not {value!r}")
    return value


@dataclass(frozen=True)
class Scope:
    """A budget scope of a ledger with its limits per rolling window (None = unlimited).

    With `fixed_limits`, the limits named by the first reserve that names any are stored and
    enforced from then on (a team run's budget): later reserves may name none (and get the
    stored ones) or the same ones; other ones are refused (`LimitMismatch`).
    """

    name: str  # "agent" in an agent's ledger, "run" in a run's ledger
    token_limit: int | None
    usd_nanos_limit: int | None
    fixed_limits: bool = False

    def __post_init__(self) -> None:
        _check_name("name", self.name, _SCOPE_NAME, "[A-Za-z0-9:._/-]{1,200}")
        _check_amount("token_limit", self.token_limit, allow_none=True)
        _check_amount("usd_nanos_limit", self.usd_nanos_limit, allow_none=True)
        if not isinstance(self.fixed_limits, bool):
            raise ValueError(f"fixed_limits must be a bool, not {self.fixed_limits!r}")


@dataclass(frozen=True)
class Reservation:
    """An outstanding reservation, as returned by `reserve()`."""

    id: str  # 32 hex digits (a uuid4 unless the caller chose it)
    scopes: tuple[str, ...]
    tokens: int
    usd_nanos: int  # 0 for a call without a price
    expires_at: float  # unix seconds, Redis clock


class SettleOutcome(enum.Enum):
    """What `settle()` found (see "Settling and tombstones" at the top of this module)."""

    SETTLED = "settled"
    ALREADY_SETTLED = "already_settled"
    RECORDED_WITHOUT_RESERVATION = "recorded_without_reservation"


@dataclass(frozen=True)
class KindState:
    limit: int | None  # for a scope with fixed limits: the stored limit, once stored
    used: int
    reserved: int
    remaining: int | None  # limit - used - reserved, floored at 0; None when unlimited
    seconds_until_free: int | None  # until the oldest bucket with spend leaves; None if unused


@dataclass(frozen=True)
class ScopeState:
    scope: str
    tokens: KindState
    usd_nanos: KindState


def _kind_state(limit: int | None, used: int, reserved: int, until_free: int) -> KindState:
    remaining = None if limit is None else max(0, limit - used - reserved)
    return KindState(
        limit=limit,
        used=used,
        reserved=reserved,
        remaining=remaining,
        seconds_until_free=None if until_free < 0 else until_free,
    )


def _limit_arg(limit: int | None) -> str:
    return "" if limit is None else str(limit)


def _stored(value: int) -> int | None:
    return None if value < 0 else value


# --- the ledger ------------------------------------------------------------------------------

KEY_CACHE_SIZE = 1024
Reply = list[int]


class BudgetLedger:
    """A budget ledger under one hash tag (`prefix`) in Redis or Redis Cluster, reached through
    `link` (on Cluster: a link to the node of the prefix's slot)."""

    def __init__(
        self,
        link: RedisLink,
        *,
        prefix: str,
        window_seconds: int = 86400,
        bucket_seconds: int = 60,
        durable_replicas: int = 0,
        durable_timeout_ms: int = 100,
    ) -> None:
        if not isinstance(link, RedisLink):
            raise ValueError(f"link must be a RedisLink, not {link!r}")
        _check_name("prefix", prefix, _PREFIX, "a string with one hash tag {...}")
        window_seconds = _check_positive_int("window_seconds", window_seconds)
        bucket_seconds = _check_positive_int("bucket_seconds", bucket_seconds)
        if window_seconds % bucket_seconds:
            raise ValueError(
                f"window_seconds ({window_seconds}) must be a multiple of "
                f"bucket_seconds ({bucket_seconds})"
            )
        durable_replicas = _check_positive_int("durable_replicas", durable_replicas, minimum=0)
        durable_timeout_ms = _check_positive_int("durable_timeout_ms", durable_timeout_ms)
        if durable_replicas and durable_timeout_ms >= link.command_timeout * 1000:
            # WAIT blocks the link's connection: it must answer before the link gives up on it
            raise ValueError(
                f"durable_timeout_ms ({durable_timeout_ms}) must be shorter than the link's "
                f"command timeout ({link.command_timeout:g} s)"
            )
        self.link = link
        self.prefix = prefix
        self.window_seconds = window_seconds
        self.bucket_seconds = bucket_seconds
        self.durable_replicas = durable_replicas
        self.durable_timeout_ms = durable_timeout_ms
        self._script = link.register_script(LEDGER_LUA)
        self._keys: dict[str, list[str]] = {}

    @staticmethod
    def agent_prefix(namespace: str, agent: str) -> str:
        """`kubeagents:{<namespace>/<agent>}:`, the prefix of an agent's ledger."""
        _check_name("namespace", namespace, _NAME_PART, "[A-Za-z0-9._-]{1,253}")
        _check_name("agent", agent, _NAME_PART, "[A-Za-z0-9._-]{1,253}")
        return agent_key(namespace, agent, "")

    @staticmethod
    def run_prefix(namespace: str, run: str) -> str:
        """`kubeagents:{<namespace>/run:<run>}:`, the prefix of a team run's ledger."""
        _check_name("namespace", namespace, _NAME_PART, "[A-Za-z0-9._-]{1,253}")
        _check_name("run", run, _RUN_ID, "[A-Za-z0-9._/-]{1,150}")
        return f"kubeagents:{{{namespace}/run:{run}}}:"

    @classmethod
    def for_agent(
        cls, link: RedisLink, *, namespace: str, agent: str, **options: Any
    ) -> BudgetLedger:
        """The ledger of an agent; its scope is `agent` (AGENT_SCOPE)."""
        return cls(link, prefix=cls.agent_prefix(namespace, agent), **options)

    @classmethod
    def for_run(cls, link: RedisLink, *, namespace: str, run: str, **options: Any) -> BudgetLedger:
        """The ledger of a team run, shared by all of its agents; its scope is `run`
        (RUN_SCOPE), with fixed limits."""
        return cls(link, prefix=cls.run_prefix(namespace, run), **options)

    def keys(self, scope: str) -> list[str]:
        """Every Redis key of `scope` (see the key layout at the top of this module)."""
        keys = self._keys.get(scope)
        if keys is None:
            _check_name("scope", scope, _SCOPE_NAME, "[A-Za-z0-9:._/-]{1,200}")
            keys = [f"{self.prefix}{scope}:{suffix}" for suffix in SCOPE_SUFFIXES]
            if len(self._keys) >= KEY_CACHE_SIZE:  # scopes come and go: start over
                self._keys.clear()
            self._keys[scope] = keys
        return keys

    async def reserve(
        self,
        scopes: Sequence[Scope],
        *,
        tokens: int,
        usd_nanos: int | None,
        ttl_seconds: float,
        reservation_id: str | None = None,
    ) -> Reservation:
        """Reserve `tokens` and `usd_nanos` (None: the call has no price) in every scope at
        once, or raise `BudgetExceeded`, `LimitMismatch` or `Unpriced` (nothing reserved).

        `reservation_id` (32 hex digits; a uuid4 when not given) makes a retry of a reserve
        whose outcome is unknown idempotent."""
        names = self._check_scopes(scopes)
        _check_amount("tokens", tokens)
        _check_amount("usd_nanos", usd_nanos, allow_none=True)
        ttl_ms = _check_ttl("ttl_seconds", ttl_seconds)
        if reservation_id is None:
            reservation_id = uuid.uuid4().hex
        else:
            _check_name("reservation_id", reservation_id, _RESERVATION_ID, "[0-9a-f]{32}")
        args: list[str | int] = [
            reservation_id,
            tokens,
            "" if usd_nanos is None else usd_nanos,
            ttl_ms,
        ]
        for scope in scopes:
            args += [
                _limit_arg(scope.token_limit),
                _limit_arg(scope.usd_nanos_limit),
                "1" if scope.fixed_limits else "0",
            ]
        expected = Reservation(
            id=reservation_id,
            scopes=names,
            tokens=tokens,
            usd_nanos=usd_nanos or 0,
            expires_at=time.time() + ttl_ms / 1000,
        )
        acknowledged: int | str = 0
        try:
            if self.durable_replicas:
                reply, acknowledged = await self._call_then_wait("reserve", names, args)
            else:
                reply = await self._call("reserve", names, args)
        except LedgerUnavailable as error:
            error.unconfirmed = expected
            raise
        outcome = reply[0]
        if outcome == 1:
            reservation = Reservation(
                id=reservation_id,
                scopes=names,
                tokens=tokens,
                usd_nanos=usd_nanos or 0,
                expires_at=reply[1] / 1000,
            )
            if self.durable_replicas and not (
                isinstance(acknowledged, int) and acknowledged >= self.durable_replicas
            ):
                await self._release_unacknowledged(reservation, acknowledged)
            return reservation
        if outcome == 0:
            _, index, kind, limit, used, reserved, requested, retry_after, never_fits = reply
            raise BudgetExceeded(
                scope=names[index - 1],
                kind=KINDS[kind - 1],
                limit=limit,
                used=used,
                reserved=reserved,
                requested=requested,
                retry_after=None if retry_after < 0 else retry_after,
                never_fits=bool(never_fits),
                window_seconds=self.window_seconds,
            )
        if outcome == 2:
            raise LimitMismatch(
                scope=names[reply[1] - 1],
                stored_token_limit=_stored(reply[2]),
                stored_usd_nanos_limit=_stored(reply[3]),
            )
        if outcome == 3:
            raise Unpriced(scope=names[reply[1] - 1])
        if outcome == 4:
            raise LedgerUnavailable(
                f"reservation {reservation_id} was settled already; nothing was reserved"
            )
        raise LedgerUnavailable(f"budget ledger: unexpected reply to reserve: {reply}")

    async def _release_unacknowledged(
        self, reservation: Reservation, acknowledged: int | str
    ) -> NoReturn:
        """Release a reservation the replicas did not acknowledge, then raise."""
        got = f"got {acknowledged}" if isinstance(acknowledged, int) else acknowledged
        error = LedgerUnavailable(
            f"reservation not acknowledged by {self.durable_replicas} replica(s) within "
            f"{self.durable_timeout_ms} ms ({got})"
        )
        error.unconfirmed = reservation
        # If this fails too, the caller releases `unconfirmed`, or it is charged in full at its
        # expiry.
        with contextlib.suppress(LedgerError):
            await self.settle(reservation, tokens=0, usd_nanos=0)
        raise error

    async def settle(
        self, reservation: Reservation, *, tokens: int, usd_nanos: int
    ) -> SettleOutcome:
        """Replace the reservation by the actual spend (charged in full, even over the amount
        reserved, and even when the reservation was lost). Idempotent: a reservation settled
        before, or expired and so charged in full, is left alone."""
        names = self._check_reservation(reservation)
        _check_amount("tokens", tokens)
        _check_amount("usd_nanos", usd_nanos)
        reply = await self._call("settle", names, [reservation.id, tokens, usd_nanos])
        if reply[0] == 1:
            return SettleOutcome.SETTLED
        if reply[0] == 3:
            return SettleOutcome.RECORDED_WITHOUT_RESERVATION
        return SettleOutcome.ALREADY_SETTLED

    async def snapshot(self, scopes: Sequence[Scope]) -> list[ScopeState]:
        """The state of each scope now (after charging expired reservations). A scope with
        fixed limits reports its stored limits once they are stored (the given ones before)."""
        names = self._check_scopes(scopes)
        reply = await self._call("snapshot", names, [])
        states = []
        for i, scope in enumerate(scopes):
            values = reply[i * 9 : i * 9 + 9]
            used_t, used_u, res_t, res_u, free_t, free_u, stored, token_limit, usd_limit = values
            limits = (scope.token_limit, scope.usd_nanos_limit)
            if scope.fixed_limits and stored:
                limits = (_stored(token_limit), _stored(usd_limit))
            states.append(
                ScopeState(
                    scope=scope.name,
                    tokens=_kind_state(limits[0], used_t, res_t, free_t),
                    usd_nanos=_kind_state(limits[1], used_u, res_u, free_u),
                )
            )
        return states

    # --- internals ---------------------------------------------------------------------------

    def _command(
        self, op: str, scopes: Sequence[str], args: Sequence[str | int]
    ) -> tuple[list[str], list[str | int]]:
        keys = [key for scope in scopes for key in self.keys(scope)]
        argv: list[str | int] = [op, self.window_seconds, self.bucket_seconds, len(scopes), *args]
        return keys, argv

    async def _call(self, op: str, scopes: Sequence[str], args: Sequence[str | int]) -> Reply:
        keys, argv = self._command(op, scopes, args)
        try:
            reply = await self._script(keys=keys, args=argv)
        except (RedisError, OSError) as error:
            raise LedgerUnavailable(f"budget ledger in Redis unavailable: {error}") from error
        return [int(value) for value in reply]

    async def _call_then_wait(
        self, op: str, scopes: Sequence[str], args: Sequence[str | int]
    ) -> tuple[Reply, int | str]:
        """The script and `WAIT <replicas> <timeout>` pipelined on the link's one connection
        (both sent before either reply is awaited), so WAIT covers the script's writes. Returns
        the script's reply and the number of replicas that acknowledged, or why that number
        cannot be trusted."""
        keys, argv = self._command(op, scopes, args)
        evalsha = ("EVALSHA", self._script.sha, len(keys), *keys, *argv)
        wait = ("WAIT", self.durable_replicas, self.durable_timeout_ms)
        for attempt in range(2):
            node = self.link.node
            replies: tuple[Any, Any] = await asyncio.gather(
                self.link.execute(*evalsha), self.link.execute(*wait), return_exceptions=True
            )
            reply, acknowledged = replies
            if isinstance(reply, NoScriptError) and attempt == 0:
                try:
                    await self.link.execute("SCRIPT", "LOAD", self._script.source)
                except (RedisError, OSError) as error:
                    raise LedgerUnavailable(
                        f"budget ledger in Redis unavailable: {error}"
                    ) from error
                continue  # that WAIT followed a script that did not run
            if isinstance(reply, RedisError | OSError):
                raise LedgerUnavailable(f"budget ledger in Redis unavailable: {reply}") from reply
            if isinstance(reply, BaseException):
                raise reply
            if self.link.node != node:
                # a redirect: the script ran on another node than the one that answered WAIT
                return [int(value) for value in reply], "the link moved to another node"
            if isinstance(acknowledged, BaseException):
                return [int(value) for value in reply], f"WAIT failed: {acknowledged}"
            return [int(value) for value in reply], int(acknowledged)
        raise LedgerUnavailable("budget ledger: the script could not be loaded")

    @staticmethod
    def _check_scopes(scopes: Sequence[Scope]) -> tuple[str, ...]:
        if isinstance(scopes, Scope | str) or not scopes:
            raise ValueError("scopes must be a non-empty sequence of Scope")
        for scope in scopes:
            if not isinstance(scope, Scope):
                raise ValueError(f"scopes must hold Scope objects, not {scope!r}")
        names = tuple(scope.name for scope in scopes)
        if len(set(names)) != len(names):
            raise ValueError(f"scopes must have distinct names, not {list(names)}")
        return names

    @staticmethod
    def _check_reservation(reservation: Reservation) -> tuple[str, ...]:
        if not isinstance(reservation, Reservation):
            raise ValueError(f"reservation must be a Reservation, not {reservation!r}")
        if not _RESERVATION_ID.fullmatch(reservation.id):
            raise ValueError(f"reservation id must be 32 hex digits, not {reservation.id!r}")
        names = tuple(reservation.scopes)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"reservation scopes must be distinct and non-empty: {names}")
        for name in names:
            if not isinstance(name, str) or not _SCOPE_NAME.fullmatch(name):
                raise ValueError(f"reservation scope {name!r} is not a valid scope name")
        return names
