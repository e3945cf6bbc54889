"""The rolling budget ledger of one agent in Redis: reserve before a call, settle after it.

Every proxy replica of an agent shares one ledger in Redis, so spend can never exceed the
configured budget: not under concurrency (each operation is one Lua script, atomic in Redis),
not across replicas (they share the keys), not across crashes (a reservation that is never
settled is charged in full once it expires).

Exceptions (all subclasses of `LedgerError`):

- `BudgetExceeded`: `reserve()` refused; nothing was reserved anywhere. Carries the scope and
  kind ("tokens"/"usd") that failed with limit, used, reserved, requested, `retry_after`
  (whole seconds >= 1, or None) and `never_fits`.
- `LedgerUnavailable`: Redis could not be reached or did not answer in time (any redis-py
  error, or an OS-level socket error, wrapped; the original is `__cause__`). The proxy fails
  closed on it (503). Whether a `reserve()` that raised it took effect is unknown; if it did,
  the reservation expires and is charged in full, so budget can be over-counted, never leaked.

`ValueError` (naming the argument) is raised for bad input before Redis is touched.

Amounts: tokens and US dollars as integer nano-dollars (`usd_nanos`, 1e-9 USD). Every amount
and limit is an int in [0, 2**53 - 1], because Lua numbers are doubles.

Key layout. Every key of an agent starts with `kubeagents:{<namespace>/<agent>}:`, so all of
them share one Redis Cluster hash tag and one script can touch them all. Each scope (the agent
itself, `agent`, or a run, `run:<run-id>`) has five keys, `<prefix><scope>:<suffix>`:

| suffix | type | content |
|---|---|---|
| `totals` | hash | running totals: `used_tokens`, `used_usd`, `reserved_tokens`, `reserved_usd` |
| `buckets` | hash | spend per bucket: `<bucket start s>:tokens`, `<bucket start s>:usd` |
| `bucket_starts` | zset | member and score: the start (unix s) of every bucket holding spend |
| `reservations` | hash | outstanding reservation id -> `"<tokens> <usd_nanos>"` |
| `reservation_expiry` | zset | outstanding reservation id, score: its expiry (unix ms) |

All five keys of a scope get the same absolute expiry (PEXPIREAT) on every write:
`max(now, latest reservation expiry) + window + bucket + 60 s`, the moment after which nothing
in them can count any more. So an idle agent's ledger disappears by itself.

Algorithm. Time is Redis's (`TIME` inside the script), never a replica's clock. Spend goes into
the bucket `floor(now / bucket) * bucket`; a bucket counts until its whole span is older than
the window, i.e. it leaves at `start + bucket + window`, so spend counts for between `window`
and `window + bucket` seconds (never shorter than the window: the conservative side). Every
operation first sweeps each scope it touches: reservations past their expiry are turned into a
charge of their full reserved amounts, recorded in the bucket of their *expiry time* (the same
bucket whichever later call sweeps them, and in every scope of the reservation), then buckets
that left the window are subtracted from the running totals and deleted (a zset range, usually
0 or 1 bucket). So no call sums the buckets; it reads four running totals per scope.

A reservation is recorded in each of its scopes, with one expiry. A scope is swept by every
call that names it; the proxy names the `agent` scope in every call, and a run scope that no
call names any more is charged (in the same expiry bucket) by the next call that names it, or
its keys expire. Every operation on a reservation sweeps all of its scopes first, so its
scopes never disagree: settle and extend find it in all of them or in none.
`reserve()` is idempotent by its (client-generated) id, because redis-py resends a command
whose reply was lost: the second run finds the id and reserves nothing more.

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

Each operation is one EVALSHA round trip; the script (ledger.lua, shipped in this package) is
sent with SCRIPT LOAD only when a server does not know it yet.
"""

from __future__ import annotations

import enum
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import Any, TypeVar

import redis.asyncio
import redis.asyncio.cluster
import redis.exceptions

from kubeagents.agent import agent_key
from kubeagents.redis_link import RedisLink

T = TypeVar("T")

MAX_AMOUNT = 2**53 - 1
"""The largest amount or limit: Lua numbers are doubles, exact only below 2**53."""

MAX_TTL_SECONDS = 7 * 86400
"""The longest reservation ttl (and extension) accepted."""

SCOPE_SUFFIXES = ("totals", "buckets", "bucket_starts", "reservations", "reservation_expiry")

KINDS = ("tokens", "usd")

_SCOPE_NAME = re.compile(r"[A-Za-z0-9:._/-]{1,200}")
_AGENT_PART = re.compile(r"[A-Za-z0-9._-]{1,253}")
_RESERVATION_ID = re.compile(r"[0-9a-f]{32}")


def _load_script() -> str:
    return resources.files(__package__).joinpath("ledger.lua").read_text(encoding="utf-8")


LEDGER_LUA = _load_script()


# --- errors ----------------------------------------------------------------------------------


class LedgerError(Exception):
    """Base of every error of the budget ledger."""


class LedgerUnavailable(LedgerError):
    """Redis could not be reached or did not answer in time; the proxy fails closed (503).

    Raised by `reserve()`, it carries the reservation that may or may not have been recorded
    (`unconfirmed`), so the caller can release it (`settle` with zero is idempotent) instead of
    leaving it to be charged in full when it expires.
    """

    unconfirmed: Reservation | None = None


class BudgetExceeded(LedgerError):
    """`reserve()` was refused because a scope's rolling budget of one kind would be exceeded."""

    def __init__(
        self,
        *,
        scope: str,
        kind: str,
        limit: int,
        used: int,
        reserved: int,
        requested: int,
        retry_after: int | None,
        never_fits: bool,
        window_seconds: int = 86400,
    ) -> None:
        self.scope = scope
        self.kind = kind
        self.limit = limit
        self.used = used
        self.reserved = reserved
        self.requested = requested
        self.retry_after = retry_after
        self.never_fits = never_fits
        self.window_seconds = window_seconds
        super().__init__(str(self))

    def __str__(self) -> str:
        tokens = self.kind == "tokens"

        def number(value: int) -> str:
            return f"{value:,}" if tokens else _format_usd(value)

        def amount(value: int) -> str:
            return f"{value:,} tokens" if tokens else _format_usd(value)

        unit = "token" if tokens else "USD"
        period = "daily" if self.window_seconds == 86400 else "rolling"
        text = (
            f"{period} {unit} budget of scope {self.scope} exhausted: "
            f"{number(self.used)} used + {number(self.reserved)} reserved of "
            f"{number(self.limit)} in the last {_format_duration(self.window_seconds)}"
        )
        if self.never_fits:
            return f"{text}; a request of {amount(self.requested)} can never fit"
        if self.retry_after is not None:
            return (
                f"{text}; {amount(self.requested)} free again in "
                f"{_format_duration(self.retry_after)}"
            )
        return text


def _format_usd(nanos: int) -> str:
    dollars = Decimal(nanos).scaleb(-9)
    if nanos % 10_000_000 == 0:
        return f"${dollars:,.2f}"
    return f"${dollars:,.9f}".rstrip("0")


def _format_duration(seconds: int) -> str:
    """`45s`, `37m`, `2h 5m`, `24h`: under a minute exact, otherwise rounded up to minutes."""
    if seconds < 60:
        return f"{seconds}s"
    hours, minutes = divmod(math.ceil(seconds / 60), 60)
    if hours and minutes:
        return f"{hours}h {minutes}m"
    return f"{hours}h" if hours else f"{minutes}m"


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


@dataclass(frozen=True)
class Scope:
    """A budget scope of an agent with its limits per rolling window (None = unlimited)."""

    name: str  # "agent" or "run:<run-id>"
    token_limit: int | None
    usd_nanos_limit: int | None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _SCOPE_NAME.fullmatch(self.name):
            raise ValueError(f"name must match [A-Za-z0-9:._/-]{{1,200}}, not {self.name!r}")
        _check_amount("token_limit", self.token_limit, allow_none=True)
        _check_amount("usd_nanos_limit", self.usd_nanos_limit, allow_none=True)


@dataclass(frozen=True)
class Reservation:
    """An outstanding reservation, as returned by `reserve()`."""

    id: str  # uuid4 hex
    scopes: tuple[str, ...]
    tokens: int
    usd_nanos: int
    expires_at: float  # unix seconds, Redis clock


class SettleOutcome(enum.Enum):
    SETTLED = "settled"
    ALREADY_SETTLED_OR_EXPIRED = "already_settled_or_expired"


@dataclass(frozen=True)
class KindState:
    limit: int | None
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


# --- the ledger ------------------------------------------------------------------------------

RedisClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster | RedisLink
KEY_CACHE_SIZE = 1024


class BudgetLedger:
    """The budget ledger of one agent (`namespace`/`agent`) in Redis or Redis Cluster."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        namespace: str,
        agent: str,
        window_seconds: int = 86400,
        bucket_seconds: int = 60,
    ) -> None:
        for name, value in (("namespace", namespace), ("agent", agent)):
            if not isinstance(value, str) or not _AGENT_PART.fullmatch(value):
                raise ValueError(f"{name} must match [A-Za-z0-9._-]{{1,253}}, not {value!r}")
        for name, number in (
            ("window_seconds", window_seconds),
            ("bucket_seconds", bucket_seconds),
        ):
            if isinstance(number, bool) or not isinstance(number, int) or number <= 0:
                raise ValueError(f"{name} must be a positive int, not {number!r}")
        if window_seconds % bucket_seconds:
            raise ValueError(
                f"window_seconds ({window_seconds}) must be a multiple of "
                f"bucket_seconds ({bucket_seconds})"
            )
        self.redis = redis
        self.namespace = namespace
        self.agent = agent
        self.window_seconds = window_seconds
        self.bucket_seconds = bucket_seconds
        self.prefix = agent_key(namespace, agent, "")
        self._script = redis.register_script(LEDGER_LUA)
        self._keys: dict[str, list[str]] = {}

    def keys(self, scope: str) -> list[str]:
        """Every Redis key of `scope` (see the key layout at the top of this module)."""
        keys = self._keys.get(scope)
        if keys is None:
            if not isinstance(scope, str) or not _SCOPE_NAME.fullmatch(scope):
                raise ValueError(f"scope must match [A-Za-z0-9:._/-]{{1,200}}, not {scope!r}")
            keys = [f"{self.prefix}{scope}:{suffix}" for suffix in SCOPE_SUFFIXES]
            if len(self._keys) >= KEY_CACHE_SIZE:  # run scopes come and go: start over
                self._keys.clear()
            self._keys[scope] = keys
        return keys

    async def reserve(
        self, scopes: Sequence[Scope], *, tokens: int, usd_nanos: int, ttl_seconds: float
    ) -> Reservation:
        """Reserve `tokens` and `usd_nanos` in every scope at once, or raise `BudgetExceeded`."""
        names = self._check_scopes(scopes)
        _check_amount("tokens", tokens)
        _check_amount("usd_nanos", usd_nanos)
        ttl_ms = _check_ttl("ttl_seconds", ttl_seconds)
        reservation_id = uuid.uuid4().hex
        limits: list[str] = []
        for scope in scopes:
            for limit in (scope.token_limit, scope.usd_nanos_limit):
                limits.append("" if limit is None else str(limit))
        try:
            reply = await self._call(
                "reserve", names, reservation_id, tokens, usd_nanos, ttl_ms, *limits
            )
        except LedgerUnavailable as error:
            error.unconfirmed = Reservation(
                id=reservation_id,
                scopes=names,
                tokens=tokens,
                usd_nanos=usd_nanos,
                expires_at=time.time() + ttl_ms / 1000,
            )
            raise
        if reply[0] == 1:
            return Reservation(
                id=reservation_id,
                scopes=names,
                tokens=tokens,
                usd_nanos=usd_nanos,
                expires_at=reply[1] / 1000,
            )
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

    async def settle(
        self, reservation: Reservation, *, tokens: int, usd_nanos: int
    ) -> SettleOutcome:
        """Replace the reservation by the actual spend (charged in full, even over the amount
        reserved). Idempotent: a reservation already settled, or expired and so charged in
        full, is left alone."""
        names = self._check_reservation(reservation)
        _check_amount("tokens", tokens)
        _check_amount("usd_nanos", usd_nanos)
        reply = await self._call("settle", names, reservation.id, tokens, usd_nanos)
        if reply[0] == 1:
            return SettleOutcome.SETTLED
        return SettleOutcome.ALREADY_SETTLED_OR_EXPIRED

    async def extend(self, reservation: Reservation, *, ttl_seconds: float) -> bool:
        """Push the expiry of a live reservation to at least now + `ttl_seconds` (Redis clock).
        False when it is gone (settled, or expired and charged)."""
        names = self._check_reservation(reservation)
        ttl_ms = _check_ttl("ttl_seconds", ttl_seconds)
        reply = await self._call("extend", names, reservation.id, ttl_ms)
        return bool(reply[0] == 1)

    async def snapshot(self, scopes: Sequence[Scope]) -> list[ScopeState]:
        """The state of each scope now (after charging expired reservations)."""
        names = self._check_scopes(scopes)
        reply = await self._call("snapshot", names)
        states = []
        for i, scope in enumerate(scopes):
            used_t, used_u, res_t, res_u, free_t, free_u = reply[i * 6 : i * 6 + 6]
            states.append(
                ScopeState(
                    scope=scope.name,
                    tokens=_kind_state(scope.token_limit, used_t, res_t, free_t),
                    usd_nanos=_kind_state(scope.usd_nanos_limit, used_u, res_u, free_u),
                )
            )
        return states

    async def ping(self) -> None:
        """Raise `LedgerUnavailable` unless Redis answers."""
        await self._guard(self.redis.ping)

    # --- internals ---------------------------------------------------------------------------

    async def _call(self, op: str, scopes: Sequence[str], *args: str | int) -> list[int]:
        keys = [key for scope in scopes for key in self.keys(scope)]
        argv = [op, self.window_seconds, self.bucket_seconds, len(scopes), *args]

        async def run() -> Any:
            return await self._script(keys=keys, args=argv)

        reply = await self._guard(run)
        return [int(value) for value in reply]

    @staticmethod
    async def _guard(call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except (redis.exceptions.RedisError, OSError, RuntimeError, AttributeError) as error:
            # RuntimeError/AttributeError: redis-py's async cluster client, when a connection is
            # torn down under a command ("the handler is closed", a transport already None).
            raise LedgerUnavailable(f"budget ledger in Redis unavailable: {error}") from error

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
