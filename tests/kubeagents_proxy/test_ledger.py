"""The rolling budget ledger (kubeagents_proxy.ledger) against a real redis-server and a real
valkey-server (every test runs on both), reached through `RedisLink` as the proxy reaches it."""

from __future__ import annotations

import asyncio
import math
import random
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import redis
import redis.exceptions

from harness.processes import ManagedProcess, poll, wait_for
from harness.redis_servers import RedisServer, ServerKind, start_redis
from kubeagents.redis_link import RedisLink
from kubeagents_proxy.errors import BudgetExceeded, LedgerUnavailable, LimitMismatch, Unpriced
from kubeagents_proxy.ledger import RUN_SCOPE, BudgetLedger, Reservation, Scope, SettleOutcome

T = TypeVar("T")


@pytest.fixture
def redis_url(redis_url_on_each_server: str) -> str:
    """Every test here runs on redis-server and on valkey-server (the chart's default)."""
    return redis_url_on_each_server


AGENT = Scope("agent", token_limit=10_000, usd_nanos_limit=1_000_000_000)  # 10k tokens, $1


def run(factory: Callable[[RedisLink], Coroutine[Any, Any, T]], url: str) -> T:
    """Run `factory(link)` in a fresh event loop with a fresh RedisLink, closed afterwards."""

    async def main() -> T:
        link = RedisLink(url)
        try:
            return await factory(link)
        finally:
            await link.aclose()

    return asyncio.run(main())


def unused_link() -> RedisLink:
    """A link to a port nothing listens on (it connects only when a command is sent)."""
    return RedisLink("redis://127.0.0.1:1")


def dump_all(client: redis.Redis) -> dict[Any, tuple[Any, Any, int]]:
    """Every key with its type, serialized value and absolute expiry."""
    return {
        key: (client.type(key), client.dump(key), client.pexpiretime(key))
        for key in client.scan_iter()
    }


async def newest_bucket(ledger: BudgetLedger, scope: str = "agent") -> int:
    """The start (unix s) of the newest bucket holding spend of `scope`."""
    starts_key = ledger.keys(scope)[2]
    starts = cast(list[bytes], await ledger.link.execute("ZRANGE", starts_key, 0, -1))
    return max(int(start) for start in starts)


async def redis_seconds(link: RedisLink) -> float:
    seconds, micros = await link.execute("TIME")
    return int(seconds) + int(micros) / 1e6


# --- reserve ----------------------------------------------------------------------------------


def test_reserve_within_budget_succeeds_and_reserves_in_every_scope(redis_url: str) -> None:
    run_scope = Scope("run:r1", token_limit=5_000, usd_nanos_limit=None)

    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        before = await redis_seconds(link)
        reservation = await ledger.reserve(
            [AGENT, run_scope], tokens=3_000, usd_nanos=40_000_000, ttl_seconds=30
        )
        assert reservation.scopes == ("agent", "run:r1")
        assert (reservation.tokens, reservation.usd_nanos) == (3_000, 40_000_000)
        assert len(reservation.id) == 32
        assert before + 29 < reservation.expires_at < before + 31
        agent, run_state = await ledger.snapshot([AGENT, run_scope])
        assert (agent.tokens.reserved, agent.tokens.used, agent.tokens.remaining) == (
            3_000,
            0,
            7_000,
        )
        assert agent.usd_nanos.reserved == 40_000_000
        assert agent.usd_nanos.remaining == 960_000_000
        assert (run_state.tokens.reserved, run_state.tokens.remaining) == (3_000, 2_000)
        assert run_state.usd_nanos.reserved == 40_000_000
        assert run_state.usd_nanos.remaining is None  # unlimited, but still tracked
        second = await ledger.reserve([AGENT, run_scope], tokens=2_000, usd_nanos=0, ttl_seconds=30)
        assert second.id != reservation.id

    run(scenario, redis_url)


@pytest.mark.parametrize(
    ("tokens", "usd_nanos", "kind", "limit", "used", "requested"),
    [
        (2_000, 1, "tokens", 10_000, 9_000, 2_000),
        (1, 200_000_000, "usd", 1_000_000_000, 900_000_000, 200_000_000),
    ],
    ids=["tokens", "usd"],
)
def test_reserve_over_budget_is_refused_with_numbers_and_changes_no_key(
    redis_url: str,
    redis_client: redis.Redis,
    tokens: int,
    usd_nanos: int,
    kind: str,
    limit: int,
    used: int,
    requested: int,
) -> None:
    async def spend(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        done = await ledger.reserve([AGENT], tokens=9_000, usd_nanos=900_000_000, ttl_seconds=30)
        await ledger.settle(done, tokens=8_000, usd_nanos=800_000_000)
        await ledger.reserve([AGENT], tokens=1_000, usd_nanos=100_000_000, ttl_seconds=30)

    run(spend, redis_url)
    before = dump_all(redis_client)

    async def refused(link: RedisLink) -> BudgetExceeded:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        with pytest.raises(BudgetExceeded) as refusal:
            await ledger.reserve([AGENT], tokens=tokens, usd_nanos=usd_nanos, ttl_seconds=30)
        return refusal.value

    error = run(refused, redis_url)
    assert dump_all(redis_client) == before
    assert (error.scope, error.kind, error.limit, error.requested) == (
        "agent",
        kind,
        limit,
        requested,
    )
    assert error.used + error.reserved == used
    assert error.reserved == (1_000 if kind == "tokens" else 100_000_000)
    assert not error.never_fits
    assert error.retry_after is not None
    assert error.retry_after >= 1


def test_one_failing_scope_reserves_nothing_in_the_other(
    redis_url: str, redis_client: redis.Redis
) -> None:
    small_run = Scope("run:small", token_limit=500, usd_nanos_limit=None)

    async def scenario(link: RedisLink) -> BudgetExceeded:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        with pytest.raises(BudgetExceeded) as refusal:
            await ledger.reserve([AGENT, small_run], tokens=600, usd_nanos=5, ttl_seconds=30)
        agent, run_state = await ledger.snapshot([AGENT, small_run])
        assert agent.tokens.reserved == agent.usd_nanos.reserved == 0
        assert run_state.tokens.reserved == run_state.usd_nanos.reserved == 0
        return refusal.value

    error = run(scenario, redis_url)
    assert (error.scope, error.kind, error.limit, error.requested) == (
        "run:small",
        "tokens",
        500,
        600,
    )
    assert error.never_fits
    assert error.retry_after is None
    assert list(redis_client.scan_iter()) == []  # not a single key was written


def test_refusal_reports_the_longest_lasting_failure(redis_url: str) -> None:
    tight = Scope("agent", token_limit=1_000, usd_nanos_limit=1_000)
    small_run = Scope("run:x", token_limit=100, usd_nanos_limit=None)

    async def scenario(link: RedisLink) -> BudgetExceeded:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        done = await ledger.reserve([tight], tokens=900, usd_nanos=0, ttl_seconds=30)
        await ledger.settle(done, tokens=900, usd_nanos=0)
        with pytest.raises(BudgetExceeded) as refusal:
            # tokens: fits again once the 900 age out; run:x: 200 tokens can never fit in 100
            await ledger.reserve([tight, small_run], tokens=200, usd_nanos=0, ttl_seconds=30)
        return refusal.value

    error = run(scenario, redis_url)
    assert (error.scope, error.kind, error.never_fits) == ("run:x", "tokens", True)


# --- settle -----------------------------------------------------------------------------------


def test_settle_charges_actual_and_releases_the_rest(redis_url: str) -> None:
    run_scope = Scope("run:r1", token_limit=None, usd_nanos_limit=500_000_000)

    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        reservation = await ledger.reserve(
            [AGENT, run_scope], tokens=4_000, usd_nanos=300_000_000, ttl_seconds=30
        )
        outcome = await ledger.settle(reservation, tokens=1_500, usd_nanos=120_000_000)
        assert outcome is SettleOutcome.SETTLED
        for state in await ledger.snapshot([AGENT, run_scope]):
            assert (state.tokens.used, state.tokens.reserved) == (1_500, 0)
            assert (state.usd_nanos.used, state.usd_nanos.reserved) == (120_000_000, 0)
        agent, run_state = await ledger.snapshot([AGENT, run_scope])
        assert agent.tokens.remaining == 8_500
        assert run_state.usd_nanos.remaining == 380_000_000

    run(scenario, redis_url)


def test_settle_twice_is_a_noop(redis_url: str, redis_client: redis.Redis) -> None:
    async def first(link: RedisLink) -> Reservation:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        reservation = await ledger.reserve([AGENT], tokens=1_000, usd_nanos=10, ttl_seconds=30)
        assert await ledger.settle(reservation, tokens=700, usd_nanos=7) is SettleOutcome.SETTLED
        return reservation

    reservation = run(first, redis_url)
    before = dump_all(redis_client)

    async def again(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        outcome = await ledger.settle(reservation, tokens=5_000, usd_nanos=50)
        assert outcome is SettleOutcome.ALREADY_SETTLED
        (agent,) = await ledger.snapshot([AGENT])
        assert (agent.tokens.used, agent.usd_nanos.used) == (700, 7)

    run(again, redis_url)
    assert dump_all(redis_client) == before


def test_settle_over_the_reserved_amount_is_charged_in_full(redis_url: str) -> None:
    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        reservation = await ledger.reserve([AGENT], tokens=9_000, usd_nanos=10, ttl_seconds=30)
        await ledger.settle(reservation, tokens=12_000, usd_nanos=2_000_000_000)
        (agent,) = await ledger.snapshot([AGENT])
        assert (agent.tokens.used, agent.usd_nanos.used) == (12_000, 2_000_000_000)
        assert agent.tokens.remaining == agent.usd_nanos.remaining == 0  # floored at 0
        with pytest.raises(BudgetExceeded) as refusal:
            await ledger.reserve([AGENT], tokens=1, usd_nanos=0, ttl_seconds=30)
        assert refusal.value.used == 12_000

    run(scenario, redis_url)


# --- expiry --------------------------------------------------------------------------


def test_unsettled_reservation_is_charged_in_full_by_the_next_call_after_expiry(
    redis_url: str,
) -> None:
    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        run_scope = Scope("run:lost", token_limit=None, usd_nanos_limit=None)
        reservation = await ledger.reserve(
            [AGENT, run_scope], tokens=2_500, usd_nanos=30_000, ttl_seconds=0.3
        )

        async def charged() -> bool:
            agent, run_state = await ledger.snapshot([AGENT, run_scope])
            return all(
                (s.tokens.used, s.tokens.reserved, s.usd_nanos.used, s.usd_nanos.reserved)
                == (2_500, 0, 30_000, 0)
                for s in (agent, run_state)
            )

        await poll(charged, within=10, what="the expired reservation to be charged in full")
        assert await redis_seconds(link) >= reservation.expires_at
        outcome = await ledger.settle(reservation, tokens=10, usd_nanos=10)
        assert outcome is SettleOutcome.ALREADY_SETTLED
        assert await charged()

    run(scenario, redis_url)


def test_expired_reservation_is_charged_by_a_reserve_too(redis_url: str) -> None:
    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        lost = await ledger.reserve([AGENT], tokens=6_000, usd_nanos=0, ttl_seconds=0.2)

        async def refused_after_expiry() -> BudgetExceeded | None:
            # 5,000 never fits next to 6,000 (limit 10,000): refused while the reservation is
            # outstanding (reserved 6,000), then after the sweep charged it (used 6,000)
            try:
                reservation = await ledger.reserve(
                    [AGENT], tokens=5_000, usd_nanos=0, ttl_seconds=30
                )
            except BudgetExceeded as error:
                return error if error.reserved == 0 else None
            pytest.fail(f"reserved over the budget: {reservation}")

        error = await poll(refused_after_expiry, within=10, what="reserve to sweep the expiry")
        assert (error.used, error.reserved) == (6_000, 0)
        assert await ledger.settle(lost, tokens=0, usd_nanos=0) is (SettleOutcome.ALREADY_SETTLED)

    run(scenario, redis_url)


async def _after(link: RedisLink, moment: float) -> bool:
    return await redis_seconds(link) >= moment


def test_killed_proxy_cannot_leak_its_reservation(redis_url: str, tmp_path: Path) -> None:
    """A process that reserved and was killed with SIGKILL: its reservation is charged."""
    child = (
        "import asyncio, sys\n"
        "from kubeagents.redis_link import RedisLink\n"
        "from kubeagents_proxy.ledger import BudgetLedger, Scope\n"
        "async def main():\n"
        "    link = RedisLink(sys.argv[1])\n"
        "    ledger = BudgetLedger.for_agent(link, namespace='ns', agent='writer')\n"
        "    scope = Scope('agent', token_limit=10000, usd_nanos_limit=None)\n"
        "    r = await ledger.reserve([scope], tokens=1234, usd_nanos=99, ttl_seconds=1)\n"
        "    print('reserved', r.id, flush=True)\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    process = ManagedProcess(
        "ledger-child", [sys.executable, "-c", child, redis_url], tmp_path / "child.log"
    )
    try:
        process.wait_for_log(r"reserved [0-9a-f]{32}", timeout=30)
    finally:
        process.kill()
        process.stop()

    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")

        async def charged() -> bool:
            (agent,) = await ledger.snapshot([AGENT])
            return (agent.tokens.used, agent.tokens.reserved, agent.usd_nanos.used) == (
                1_234,
                0,
                99,
            )

        await poll(charged, within=15, what="the killed proxy's reservation to be charged")

    run(scenario, redis_url)


# --- the rolling window and retry_after ---------------------------------------------------------


def test_spend_ages_out_of_the_window_when_retry_after_said(redis_url: str) -> None:
    scope = Scope("agent", token_limit=1_000, usd_nanos_limit=None)

    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(
            link, namespace="ns", agent="writer", window_seconds=4, bucket_seconds=1
        )
        first = await ledger.reserve([scope], tokens=600, usd_nanos=0, ttl_seconds=30)
        await ledger.settle(first, tokens=600, usd_nanos=0)
        # a later bucket, so that only the older spend has to age out
        await poll(partial(_after, link, await newest_bucket(ledger) + 1.0), within=10, what="1s")
        second = await ledger.reserve([scope], tokens=300, usd_nanos=0, ttl_seconds=30)
        await ledger.settle(second, tokens=300, usd_nanos=0)

        before = await redis_seconds(link)
        with pytest.raises(BudgetExceeded) as refusal:
            await ledger.reserve([scope], tokens=500, usd_nanos=0, ttl_seconds=30)
        after = await redis_seconds(link)
        error = refusal.value
        assert (error.used, error.reserved, error.limit) == (900, 0, 1_000)
        retry_after = error.retry_after
        assert retry_after is not None
        assert 1 <= retry_after <= 5  # within window + bucket

        async def fits() -> float | None:
            (state,) = await ledger.snapshot([scope])
            if state.tokens.remaining is not None and state.tokens.remaining >= 500:
                return await redis_seconds(link)
            return None

        fitted_at = await poll(fits, within=15, what="the first spend to age out")
        # the moment the request fits is within the last second before retry_after ...
        assert fitted_at > before + retry_after - 1
        assert fitted_at <= after + retry_after + 1.0  # + polling and a busy machine
        # ... and then only the first 600 have left: the 300 of the later bucket still count
        (state,) = await ledger.snapshot([scope])
        assert state.tokens.used == 300
        reservation = await ledger.reserve([scope], tokens=500, usd_nanos=0, ttl_seconds=30)
        assert reservation.tokens == 500

    run(scenario, redis_url)


def test_retry_after_walks_buckets_oldest_first_until_enough_is_free(redis_url: str) -> None:
    scope = Scope("agent", token_limit=1_000, usd_nanos_limit=None)

    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(
            link, namespace="ns", agent="writer", window_seconds=6, bucket_seconds=1
        )
        bucket_of: dict[int, int] = {}
        for amount in (100, 200, 600):  # three buckets, one after the other
            spent = await ledger.reserve([scope], tokens=amount, usd_nanos=0, ttl_seconds=30)
            await ledger.settle(spent, tokens=amount, usd_nanos=0)
            newest = await newest_bucket(ledger)
            bucket_of[amount] = newest
            await poll(partial(_after, link, newest + 1.0), within=10, what="next bucket")
        assert len(set(bucket_of.values())) == 3

        before = await redis_seconds(link)
        with pytest.raises(BudgetExceeded) as refusal:
            # needs 900 + 350 - 1000 = 250 freed: the 100 bucket is not enough, 100 + 200 is
            await ledger.reserve([scope], tokens=350, usd_nanos=0, ttl_seconds=30)
        after = await redis_seconds(link)
        leaves = bucket_of[200] + 1 + 6  # the bucket's start + bucket + window
        assert refusal.value.retry_after is not None
        assert math.ceil(leaves - after) <= refusal.value.retry_after <= math.ceil(leaves - before)

    run(scenario, redis_url)


def test_request_larger_than_the_limit_never_fits(redis_url: str) -> None:
    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        with pytest.raises(BudgetExceeded) as refusal:
            await ledger.reserve([AGENT], tokens=10_001, usd_nanos=0, ttl_seconds=30)
        error = refusal.value
        assert (error.never_fits, error.retry_after, error.used, error.reserved) == (
            True,
            None,
            0,
            0,
        )
        assert "can never fit" in str(error)
        with pytest.raises(BudgetExceeded) as usd_refusal:
            await ledger.reserve([AGENT], tokens=0, usd_nanos=1_000_000_001, ttl_seconds=30)
        assert (usd_refusal.value.kind, usd_refusal.value.never_fits) == ("usd", True)

    run(scenario, redis_url)


def test_blocked_only_by_reservations_retry_after_is_the_earliest_expiry(redis_url: str) -> None:
    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        await ledger.reserve([AGENT], tokens=4_000, usd_nanos=0, ttl_seconds=300)
        await ledger.reserve([AGENT], tokens=4_000, usd_nanos=0, ttl_seconds=120)
        with pytest.raises(BudgetExceeded) as refusal:
            await ledger.reserve([AGENT], tokens=3_000, usd_nanos=0, ttl_seconds=30)
        error = refusal.value
        assert (error.used, error.reserved, error.never_fits) == (0, 8_000, False)
        assert error.retry_after is not None
        assert 119 <= error.retry_after <= 121

    run(scenario, redis_url)


def test_budget_exceeded_message_names_scope_numbers_and_time() -> None:
    error = BudgetExceeded(
        scope="agent",
        kind="tokens",
        limit=1_000_000,
        used=1_000_000,
        reserved=2_000,
        requested=48_210,
        retry_after=37 * 60 - 20,
        never_fits=False,
    )
    assert str(error) == (
        "daily token budget of scope agent exhausted: 1,000,000 used + 2,000 reserved of "
        "1,000,000 in the last 24h; 48,210 tokens free again in 37m"
    )
    usd = BudgetExceeded(
        scope="run:r1",
        kind="usd",
        limit=5_000_000_000,
        used=4_900_000_000,
        reserved=50_000_000,
        requested=250_000_000,
        retry_after=2 * 3600 + 5 * 60,
        never_fits=False,
    )
    assert str(usd) == (
        "daily USD budget of scope run:r1 exhausted: $4.90 used + $0.05 reserved of $5.00 in "
        "the last 24h; $0.25 free again in 2h 5m"
    )
    assert isinstance(usd, Exception)


# --- snapshot, keys, round trips -----------------------------------------------------------------


def test_snapshot_reports_limit_used_reserved_remaining_and_seconds_until_free(
    redis_url: str,
) -> None:
    unlimited = Scope("run:free", token_limit=None, usd_nanos_limit=None)

    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer", window_seconds=3600)
        empty, empty_run = await ledger.snapshot([AGENT, unlimited])
        assert empty.tokens.limit == 10_000
        assert (empty.tokens.used, empty.tokens.reserved, empty.tokens.remaining) == (0, 0, 10_000)
        assert empty.tokens.seconds_until_free is None
        assert empty_run.tokens.remaining is None
        assert empty_run.usd_nanos.limit is None

        spent = await ledger.reserve([AGENT, unlimited], tokens=2_000, usd_nanos=0, ttl_seconds=60)
        await ledger.settle(spent, tokens=1_500, usd_nanos=0)
        await ledger.reserve([AGENT, unlimited], tokens=3_000, usd_nanos=20, ttl_seconds=60)
        agent, run_state = await ledger.snapshot([AGENT, unlimited])
        assert agent.scope == "agent"
        assert run_state.scope == "run:free"
        assert (agent.tokens.used, agent.tokens.reserved, agent.tokens.remaining) == (
            1_500,
            3_000,
            5_500,
        )
        # spend counts for the window plus at most one bucket
        assert agent.tokens.seconds_until_free is not None
        assert 3600 <= agent.tokens.seconds_until_free <= 3660
        assert agent.usd_nanos.seconds_until_free is None  # nothing used, only reserved
        assert (agent.usd_nanos.reserved, agent.usd_nanos.remaining) == (20, 999_999_980)
        assert (run_state.tokens.used, run_state.tokens.remaining) == (1_500, None)

    run(scenario, redis_url)


def test_keys_of_an_agent_share_its_hash_tag_and_expire_by_themselves(
    redis_url: str, redis_client: redis.Redis
) -> None:
    run_scope = Scope("run:r-1.a/b", token_limit=None, usd_nanos_limit=None)

    async def scenario(link: RedisLink) -> float:
        ledger = BudgetLedger.for_agent(
            link, namespace="team-a", agent="writer", window_seconds=600
        )
        spent = await ledger.reserve([AGENT, run_scope], tokens=10, usd_nanos=1, ttl_seconds=90)
        await ledger.settle(spent, tokens=10, usd_nanos=1)
        await ledger.reserve([AGENT, run_scope], tokens=10, usd_nanos=1, ttl_seconds=120)
        return await redis_seconds(link)

    now = run(scenario, redis_url)
    ledger = BudgetLedger.for_agent(unused_link(), namespace="team-a", agent="writer")
    expected = set(ledger.keys("agent") + ledger.keys("run:r-1.a/b"))
    stored = {key.decode() for key in redis_client.scan_iter()}
    assert stored == expected
    assert {key.rsplit(":", 1)[1] for key in stored} == {
        "totals",
        "buckets",
        "bucket_starts",
        "reservations",
        "reservation_expiry",
        "settled",
    }
    for key in stored:
        assert key.startswith("kubeagents:{team-a/writer}:")
        # the outstanding reservation's expiry (120 s) + window (600 s) + bucket (60 s) + 60 s
        expires = redis_client.pexpiretime(key) / 1000
        assert now + 835 <= expires <= now + 840.01


def test_each_operation_is_one_evalsha_round_trip(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def warm_up(link: RedisLink) -> None:
        await BudgetLedger.for_agent(link, namespace="ns", agent="writer").snapshot([AGENT])

    run(warm_up, redis_url)  # loads the script into the server (SCRIPT LOAD)
    redis_client.config_resetstat()
    sent: list[str] = []

    async def scenario(link: RedisLink) -> None:
        execute: Callable[..., Awaitable[Any]] = link.execute

        async def counting(*args: Any) -> Any:
            sent.append(str(args[0]))
            return await execute(*args)

        monkeypatch.setattr(link, "execute", counting)
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        reservation = await ledger.reserve([AGENT], tokens=100, usd_nanos=1, ttl_seconds=30)
        assert sent == ["EVALSHA"]
        await ledger.settle(reservation, tokens=50, usd_nanos=1)
        assert sent == ["EVALSHA", "EVALSHA"]

    run(scenario, redis_url)
    stats = redis_client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 2
    assert "cmdstat_eval" not in stats  # the script source is never sent per call
    assert "cmdstat_script|load" not in stats  # nor loaded again
    assert "cmdstat_wait" not in stats  # no WAIT without durable replicas


def test_a_reserve_retried_with_the_same_id_reserves_only_once(redis_url: str) -> None:
    """A reserve whose outcome was unknown, sent again with its id, must not reserve twice."""

    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        first = await ledger.reserve(
            [AGENT], tokens=700, usd_nanos=5, ttl_seconds=30, reservation_id="f" * 32
        )
        second = await ledger.reserve(
            [AGENT], tokens=700, usd_nanos=5, ttl_seconds=30, reservation_id="f" * 32
        )
        assert first == second
        (agent,) = await ledger.snapshot([AGENT])
        assert (agent.tokens.reserved, agent.usd_nanos.reserved) == (700, 5)

    run(scenario, redis_url)


# --- concurrency ---------------------------------------------------------------------------------


def test_concurrent_reserve_and_settle_from_three_ledgers_never_overshoot(redis_url: str) -> None:
    limit = Scope("agent", token_limit=60_000, usd_nanos_limit=3_000_000_000)
    run_scope = Scope("run:burst", token_limit=50_000, usd_nanos_limit=None)
    scopes = [limit, run_scope]
    rng = random.Random(4)  # noqa: S311 - request sizes, not secrets

    async def main() -> None:
        links = [RedisLink(redis_url) for _ in range(3)]  # three proxies
        ledgers = [BudgetLedger.for_agent(link, namespace="ns", agent="writer") for link in links]
        settled: list[tuple[int, int]] = []
        refused: list[BudgetExceeded] = []
        stop = asyncio.Event()
        observed: list[int] = []

        async def one(i: int) -> None:
            ledger = ledgers[i % 3]
            tokens = rng.randint(100, 1_000)
            usd = rng.randint(1_000_000, 40_000_000)
            try:
                reservation = await ledger.reserve(
                    scopes, tokens=tokens, usd_nanos=usd, ttl_seconds=60
                )
            except BudgetExceeded as error:
                refused.append(error)
                return
            await asyncio.sleep(0)  # let the others run while this reservation is outstanding
            actual = (rng.randint(0, tokens), rng.randint(0, usd))
            outcome = await ledger.settle(reservation, tokens=actual[0], usd_nanos=actual[1])
            assert outcome is SettleOutcome.SETTLED
            settled.append(actual)

        async def watch() -> None:
            while not stop.is_set():
                for state in await ledgers[0].snapshot(scopes):
                    for kind, kind_limit in (
                        (state.tokens, state.tokens.limit),
                        (state.usd_nanos, state.usd_nanos.limit),
                    ):
                        if kind_limit is not None:
                            assert kind.used + kind.reserved <= kind_limit
                observed.append(1)

        watcher = asyncio.create_task(watch())
        try:
            await asyncio.gather(*(one(i) for i in range(500)))
        finally:
            stop.set()
            await watcher
        assert observed, "the watcher never looked"
        assert refused, "the budget held every request: the test proves nothing"
        assert len(settled) >= 50
        for error in refused:
            assert error.used + error.reserved + error.requested > error.limit

        agent, run_state = await ledgers[1].snapshot(scopes)
        charged_tokens = sum(t for t, _ in settled)
        charged_usd = sum(u for _, u in settled)
        for state in (agent, run_state):
            assert state.tokens.reserved == state.usd_nanos.reserved == 0
            assert state.tokens.used == charged_tokens
            assert state.usd_nanos.used == charged_usd
        assert charged_tokens <= 50_000
        assert charged_usd <= 3_000_000_000
        for link in links:
            await link.aclose()

    asyncio.run(main())


# --- failures and validation ----------------------------------------------------------------------


def test_redis_down_raises_ledger_unavailable(tmp_path: Path, server_kind: ServerKind) -> None:
    server = start_redis(tmp_path, kind=server_kind)
    try:

        async def up(link: RedisLink) -> Reservation:
            ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
            return await ledger.reserve([AGENT], tokens=10, usd_nanos=1, ttl_seconds=30)

        reservation = run(up, server.url)
    finally:
        server.stop()

    async def down(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        with pytest.raises(LedgerUnavailable) as refused:
            await ledger.reserve([AGENT], tokens=10, usd_nanos=1, ttl_seconds=30)
        assert isinstance(refused.value.__cause__, redis.exceptions.ConnectionError)
        # The reservation that may have been recorded is handed back, to be released.
        unconfirmed = refused.value.unconfirmed
        assert unconfirmed is not None
        assert (unconfirmed.tokens, unconfirmed.usd_nanos, unconfirmed.scopes) == (
            10,
            1,
            ("agent",),
        )
        with pytest.raises(LedgerUnavailable):
            await ledger.settle(reservation, tokens=10, usd_nanos=1)
        with pytest.raises(LedgerUnavailable):
            await ledger.snapshot([AGENT])

    run(down, server.url)


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda ledger: ledger.reserve([AGENT], tokens=-1, usd_nanos=0, ttl_seconds=1), "tokens"),
        (
            lambda ledger: ledger.reserve([AGENT], tokens=1, usd_nanos=-5, ttl_seconds=1),
            "usd_nanos",
        ),
        (
            lambda ledger: ledger.reserve([AGENT], tokens=2**53, usd_nanos=0, ttl_seconds=1),
            "tokens",
        ),
        (
            lambda ledger: ledger.reserve([AGENT], tokens=1, usd_nanos=0, ttl_seconds=0),
            "ttl_seconds",
        ),
        (
            lambda ledger: ledger.reserve([AGENT], tokens=1, usd_nanos=0, ttl_seconds=-3),
            "ttl_seconds",
        ),
        (lambda ledger: ledger.reserve([], tokens=1, usd_nanos=0, ttl_seconds=1), "scopes"),
        (
            lambda ledger: ledger.reserve([AGENT, AGENT], tokens=1, usd_nanos=0, ttl_seconds=1),
            "scopes",
        ),
        (lambda ledger: ledger.settle(_reservation(), tokens=-1, usd_nanos=0), "tokens"),
        (
            lambda ledger: ledger.settle(_reservation(), tokens=1, usd_nanos=cast(int, None)),
            "usd_nanos",
        ),
        (
            lambda ledger: ledger.reserve(
                [AGENT], tokens=1, usd_nanos=0, ttl_seconds=1, reservation_id="not-hex"
            ),
            "reservation_id",
        ),
    ],
)
def test_invalid_input_raises_value_error_before_touching_redis(
    call: Callable[[BudgetLedger], Awaitable[object]], argument: str
) -> None:
    async def scenario() -> None:
        # a link to a port nothing listens on: any Redis call would raise LedgerUnavailable
        ledger = BudgetLedger.for_agent(unused_link(), namespace="ns", agent="writer")
        with pytest.raises(ValueError, match=argument):
            await call(ledger)

    asyncio.run(scenario())


def _reservation() -> Reservation:
    return Reservation(id="a" * 32, scopes=("agent",), tokens=1, usd_nanos=1, expires_at=0.0)


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: Scope("run id with spaces", 1, 1), "name"),
        (lambda: Scope("", 1, 1), "name"),
        (lambda: Scope("x" * 201, 1, 1), "name"),
        (lambda: Scope("agent", -1, 1), "token_limit"),
        (lambda: Scope("agent", 1, -1), "usd_nanos_limit"),
        (lambda: Scope("run", 1, 1, fixed_limits=cast(bool, "yes")), "fixed_limits"),
        (
            lambda: BudgetLedger.for_agent(unused_link(), namespace="a/b", agent="x"),
            "namespace",
        ),
        (lambda: BudgetLedger.for_agent(unused_link(), namespace="a", agent="{x}"), "agent"),
        (lambda: BudgetLedger.for_run(unused_link(), namespace="a", run="r{1}"), "run"),
        (lambda: BudgetLedger.for_run(unused_link(), namespace="a", run="x" * 151), "run"),
        (lambda: BudgetLedger.for_run(unused_link(), namespace="", run="r"), "namespace"),
        (lambda: BudgetLedger(unused_link(), prefix="kubeagents:no-tag:"), "prefix"),
        (
            lambda: BudgetLedger(cast(RedisLink, object()), prefix="kubeagents:{a/b}:"),
            "link",
        ),
        (
            lambda: BudgetLedger.for_agent(
                unused_link(), namespace="a", agent="x", window_seconds=100, bucket_seconds=30
            ),
            "window_seconds",
        ),
        (
            lambda: BudgetLedger.for_agent(
                unused_link(), namespace="a", agent="x", bucket_seconds=0
            ),
            "bucket_seconds",
        ),
        (
            lambda: BudgetLedger.for_agent(
                unused_link(), namespace="a", agent="x", durable_replicas=-1
            ),
            "durable_replicas",
        ),
        (
            lambda: BudgetLedger.for_agent(
                unused_link(), namespace="a", agent="x", durable_replicas=1, durable_timeout_ms=0
            ),
            "durable_timeout_ms",
        ),
        (
            # WAIT must answer before the link gives up on its connection (5 s here)
            lambda: BudgetLedger.for_agent(
                unused_link(), namespace="a", agent="x", durable_replicas=1, durable_timeout_ms=5000
            ),
            "durable_timeout_ms",
        ),
    ],
)
def test_invalid_scope_or_ledger_settings_raise_value_error(
    make: Callable[[], object], argument: str
) -> None:
    with pytest.raises(ValueError, match=argument):
        make()


# --- a team run's ledger: its own hash tag, fixed limits ----------------------------------------


def run_ledger(link: RedisLink, run_id: str = "team/r-1", **options: Any) -> BudgetLedger:
    return BudgetLedger.for_run(link, namespace="ns", run=run_id, **options)


def run_scope(tokens: int | None = None, usd_nanos: int | None = None) -> Scope:
    return Scope(RUN_SCOPE, token_limit=tokens, usd_nanos_limit=usd_nanos, fixed_limits=True)


def test_a_run_ledger_has_its_own_hash_tag_and_agent_ledgers_keep_theirs(
    redis_url: str, redis_client: redis.Redis
) -> None:
    assert BudgetLedger.run_prefix("ns", "team/r-1") == "kubeagents:{ns/run:team/r-1}:"
    assert BudgetLedger.agent_prefix("ns", "writer") == "kubeagents:{ns/writer}:"

    async def scenario(link: RedisLink) -> tuple[list[str], list[str]]:
        agent = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        team = run_ledger(link)
        for ledger, scope in ((agent, AGENT), (team, run_scope(tokens=5_000))):
            spent = await ledger.reserve([scope], tokens=10, usd_nanos=1, ttl_seconds=30)
            await ledger.settle(spent, tokens=10, usd_nanos=1)
        return agent.keys("agent"), team.keys(RUN_SCOPE)

    agent_keys, run_keys = run(scenario, redis_url)
    assert agent_keys[0] == "kubeagents:{ns/writer}:agent:totals"  # unchanged: old ledgers carry on
    assert run_keys[0] == "kubeagents:{ns/run:team/r-1}:run:totals"
    # nothing is reserved any more (those keys are gone); the settles left tombstones
    outstanding = ("reservations", "reservation_expiry")
    expected = {key for key in agent_keys + run_keys if key.rsplit(":", 1)[1] not in outstanding}
    assert {key.decode() for key in redis_client.scan_iter()} == expected


def test_every_agent_of_a_run_shares_the_run_ledger(redis_url: str) -> None:
    async def scenario(link: RedisLink) -> None:
        # two proxies of two agents: each its own link and its own ledger object of the run
        other = RedisLink(redis_url)
        try:
            first, second = run_ledger(link), run_ledger(other)
            spent = await first.reserve(
                [run_scope(tokens=1_000)], tokens=600, usd_nanos=0, ttl_seconds=30
            )
            await first.settle(spent, tokens=600, usd_nanos=0)
            with pytest.raises(BudgetExceeded) as refusal:
                await second.reserve([run_scope()], tokens=500, usd_nanos=0, ttl_seconds=30)
            assert (refusal.value.scope, refusal.value.used, refusal.value.limit) == (
                RUN_SCOPE,
                600,
                1_000,
            )
        finally:
            await other.aclose()

    run(scenario, redis_url)


def test_fixed_limits_are_stored_by_the_first_reserve_that_names_them(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario(link: RedisLink) -> None:
        ledger = run_ledger(link)
        totals = ledger.keys(RUN_SCOPE)[0]
        # no limit named yet: unlimited, and nothing is stored
        first = await ledger.reserve([run_scope()], tokens=100, usd_nanos=0, ttl_seconds=30)
        assert redis_client.hget(totals, "limits") is None
        # the first call that names a limit fixes the limits
        await ledger.reserve([run_scope(tokens=1_000)], tokens=100, usd_nanos=0, ttl_seconds=30)
        assert redis_client.hget(totals, "limits") == b"1000 -"
        # later calls that name none get the stored ones ...
        with pytest.raises(BudgetExceeded) as refusal:
            await ledger.reserve([run_scope()], tokens=801, usd_nanos=0, ttl_seconds=30)
        assert (refusal.value.limit, refusal.value.reserved) == (1_000, 200)
        # ... and so do calls that name the same ones
        same = await ledger.reserve(
            [run_scope(tokens=1_000)], tokens=800, usd_nanos=0, ttl_seconds=30
        )
        assert same.tokens == 800
        # the snapshot of the run reports the stored limits, whatever the caller names
        (state,) = await ledger.snapshot([run_scope()])
        assert (state.tokens.limit, state.tokens.reserved, state.tokens.remaining) == (
            1_000,
            1_000,
            0,
        )
        assert state.usd_nanos.limit is None
        await ledger.settle(first, tokens=50, usd_nanos=0)
        (state,) = await ledger.snapshot([run_scope(tokens=5)])
        assert (state.tokens.limit, state.tokens.used, state.tokens.remaining) == (1_000, 50, 50)

    run(scenario, redis_url)


def test_fixed_limits_are_stored_even_when_the_first_reserve_is_refused(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario(link: RedisLink) -> None:
        ledger = run_ledger(link)
        with pytest.raises(BudgetExceeded) as refusal:
            await ledger.reserve(
                [run_scope(tokens=100, usd_nanos=5_000)], tokens=500, usd_nanos=0, ttl_seconds=30
            )
        assert refusal.value.never_fits
        assert redis_client.hget(ledger.keys(RUN_SCOPE)[0], "limits") == b"100 5000"
        (state,) = await ledger.snapshot([run_scope()])
        assert (state.tokens.limit, state.usd_nanos.limit) == (100, 5_000)
        assert (state.tokens.reserved, state.tokens.used) == (0, 0)
        fits = await ledger.reserve([run_scope()], tokens=100, usd_nanos=5_000, ttl_seconds=30)
        assert fits.tokens == 100
        with pytest.raises(BudgetExceeded):
            await ledger.reserve([run_scope()], tokens=1, usd_nanos=0, ttl_seconds=30)

    run(scenario, redis_url)


@pytest.mark.parametrize(
    ("tokens", "usd_nanos"),
    [(2_000, None), (1_000, 7), (None, 7), (None, None)],
    ids=["other-tokens", "added-usd", "dropped-tokens", "none-named"],
)
def test_other_limits_than_the_stored_ones_are_refused_and_reserve_nothing(
    redis_url: str, redis_client: redis.Redis, tokens: int | None, usd_nanos: int | None
) -> None:
    async def setup(link: RedisLink) -> None:
        ledger = run_ledger(link)
        await ledger.reserve([run_scope(tokens=1_000)], tokens=10, usd_nanos=0, ttl_seconds=30)

    run(setup, redis_url)
    before = dump_all(redis_client)

    async def scenario(link: RedisLink) -> None:
        ledger = run_ledger(link)
        scope = run_scope(tokens=tokens, usd_nanos=usd_nanos)
        if tokens is None and usd_nanos is None:  # naming none is always fine: the stored apply
            reservation = await ledger.reserve([scope], tokens=5, usd_nanos=0, ttl_seconds=30)
            assert reservation.tokens == 5
            return
        with pytest.raises(LimitMismatch) as refusal:
            await ledger.reserve([scope], tokens=5, usd_nanos=0, ttl_seconds=30)
        error = refusal.value
        assert (error.scope, error.stored_token_limit, error.stored_usd_nanos_limit) == (
            RUN_SCOPE,
            1_000,
            None,
        )
        assert "tokens=1,000, usd=none" in str(error)

    run(scenario, redis_url)
    if tokens is not None or usd_nanos is not None:
        assert dump_all(redis_client) == before


def test_scopes_without_fixed_limits_take_the_limits_each_call_names(redis_url: str) -> None:
    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        small = Scope("agent", token_limit=100, usd_nanos_limit=None)
        large = Scope("agent", token_limit=10_000, usd_nanos_limit=None)
        with pytest.raises(BudgetExceeded):
            await ledger.reserve([small], tokens=500, usd_nanos=0, ttl_seconds=30)
        assert (await ledger.reserve([large], tokens=500, usd_nanos=0, ttl_seconds=30)).tokens
        (state,) = await ledger.snapshot([small])
        assert (state.tokens.limit, state.tokens.remaining) == (100, 0)

    run(scenario, redis_url)


def test_stored_limits_expire_with_the_scopes_other_keys(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario(link: RedisLink) -> list[str]:
        ledger = run_ledger(link, window_seconds=600)
        spent = await ledger.reserve(
            [run_scope(tokens=1_000)], tokens=10, usd_nanos=0, ttl_seconds=30
        )
        await ledger.settle(spent, tokens=10, usd_nanos=0)
        return ledger.keys(RUN_SCOPE)

    keys = run(scenario, redis_url)
    stored = [key for key in keys if redis_client.exists(key)]
    assert keys[0] in stored  # totals, holding the limits
    assert len({redis_client.pexpiretime(key) for key in stored}) == 1
    assert redis_client.pexpiretime(keys[0]) > 0


def test_a_run_ledger_and_the_agent_ledger_refuse_independently(redis_url: str) -> None:
    """The proxy reserves in the agent's ledger and then in the run's: each holds its own."""

    async def scenario(link: RedisLink) -> None:
        agent = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        team = run_ledger(link)
        held = await agent.reserve([AGENT], tokens=600, usd_nanos=0, ttl_seconds=30)
        with pytest.raises(BudgetExceeded):
            await team.reserve([run_scope(tokens=500)], tokens=600, usd_nanos=0, ttl_seconds=30)
        assert await agent.settle(held, tokens=0, usd_nanos=0) is SettleOutcome.SETTLED
        (state,) = await agent.snapshot([AGENT])
        assert (state.tokens.used, state.tokens.reserved) == (0, 0)

    run(scenario, redis_url)


# --- calls without a price -----------------------------------------------------------------------


def test_an_unpriced_call_is_refused_where_there_is_a_dollar_limit(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        with pytest.raises(Unpriced) as refusal:
            await ledger.reserve([AGENT], tokens=10, usd_nanos=None, ttl_seconds=30)
        assert refusal.value.scope == "agent"
        assert "no price" in str(refusal.value)
        tokens_only = Scope("run:t", token_limit=1_000, usd_nanos_limit=None)
        with pytest.raises(Unpriced) as both:
            await ledger.reserve([tokens_only, AGENT], tokens=10, usd_nanos=None, ttl_seconds=30)
        assert both.value.scope == "agent"

    run(scenario, redis_url)
    assert list(redis_client.scan_iter()) == []  # nothing reserved, nothing written


def test_an_unpriced_call_reserves_no_dollars_where_there_is_no_dollar_limit(
    redis_url: str,
) -> None:
    tokens_only = Scope("agent", token_limit=1_000, usd_nanos_limit=None)

    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        reservation = await ledger.reserve(
            [tokens_only], tokens=400, usd_nanos=None, ttl_seconds=30
        )
        assert (reservation.tokens, reservation.usd_nanos) == (400, 0)
        (state,) = await ledger.snapshot([tokens_only])
        assert (state.tokens.reserved, state.usd_nanos.reserved) == (400, 0)
        # the token limit still holds
        with pytest.raises(BudgetExceeded):
            await ledger.reserve([tokens_only], tokens=601, usd_nanos=None, ttl_seconds=30)
        await ledger.settle(reservation, tokens=300, usd_nanos=0)
        (state,) = await ledger.snapshot([tokens_only])
        assert (state.tokens.used, state.usd_nanos.used) == (300, 0)

    run(scenario, redis_url)


def test_an_unpriced_call_is_refused_by_a_stored_dollar_limit(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario(link: RedisLink) -> None:
        ledger = run_ledger(link)
        # the first call names a dollar limit and has no price: refused, but the limit is fixed
        with pytest.raises(Unpriced):
            await ledger.reserve(
                [run_scope(usd_nanos=1_000_000)], tokens=10, usd_nanos=None, ttl_seconds=30
            )
        assert redis_client.hget(ledger.keys(RUN_SCOPE)[0], "limits") == b"- 1000000"
        # a later call that names no limit gets the stored dollar limit, so it is refused too
        with pytest.raises(Unpriced) as refusal:
            await ledger.reserve([run_scope()], tokens=10, usd_nanos=None, ttl_seconds=30)
        assert refusal.value.scope == RUN_SCOPE
        (state,) = await ledger.snapshot([run_scope()])
        assert (state.tokens.reserved, state.usd_nanos.reserved) == (0, 0)
        priced = await ledger.reserve([run_scope()], tokens=10, usd_nanos=5, ttl_seconds=30)
        assert priced.usd_nanos == 5

    run(scenario, redis_url)


# --- tombstones and lost reservations ------------------------------------------------------------


def tombstone(client: redis.Redis, ledger: BudgetLedger, reservation_id: str) -> float | None:
    """The moment (unix ms) until which `reservation_id`'s tombstone is kept, or None."""
    return client.zscore(ledger.keys("agent")[5], reservation_id)


def test_settle_leaves_a_tombstone_until_ten_minutes_after_the_expiry(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario(link: RedisLink) -> tuple[BudgetLedger, Reservation]:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        reservation = await ledger.reserve([AGENT], tokens=100, usd_nanos=1, ttl_seconds=30)
        assert await ledger.settle(reservation, tokens=10, usd_nanos=1) is SettleOutcome.SETTLED
        return ledger, reservation

    ledger, reservation = run(scenario, redis_url)
    assert tombstone(redis_client, ledger, reservation.id) == (
        round(reservation.expires_at * 1000) + 600_000
    )
    # and the reservation itself is gone from every key
    assert not redis_client.hexists(ledger.keys("agent")[3], reservation.id)
    assert redis_client.zscore(ledger.keys("agent")[4], reservation.id) is None


def test_an_expired_reservation_leaves_a_tombstone_when_it_is_charged(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario(link: RedisLink) -> tuple[BudgetLedger, Reservation, float, float]:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        reservation = await ledger.reserve([AGENT], tokens=300, usd_nanos=0, ttl_seconds=0.1)
        await poll(
            partial(_after, link, reservation.expires_at + 0.01), within=10, what="the expiry"
        )
        before = await redis_seconds(link)
        (state,) = await ledger.snapshot([AGENT])  # sweeps: charged in full
        after = await redis_seconds(link)
        assert (state.tokens.used, state.tokens.reserved) == (300, 0)
        assert await ledger.settle(reservation, tokens=1, usd_nanos=0) is (
            SettleOutcome.ALREADY_SETTLED
        )
        (state,) = await ledger.snapshot([AGENT])
        assert state.tokens.used == 300
        return ledger, reservation, before, after

    ledger, reservation, before, after = run(scenario, redis_url)
    kept_until = tombstone(redis_client, ledger, reservation.id)
    assert kept_until is not None
    assert before * 1000 + 600_000 - 1 <= kept_until <= after * 1000 + 600_000 + 1


def test_tombstones_past_their_time_are_deleted_by_the_next_call(
    redis_url: str, redis_client: redis.Redis
) -> None:
    async def scenario(link: RedisLink) -> BudgetLedger:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        spent = await ledger.reserve([AGENT], tokens=1, usd_nanos=0, ttl_seconds=30)
        await ledger.settle(spent, tokens=1, usd_nanos=0)
        now_ms = round(await redis_seconds(link) * 1000)
        await link.execute("ZADD", ledger.keys("agent")[5], now_ms - 1, "e" * 32)  # past
        await ledger.snapshot([AGENT])
        return ledger

    ledger = run(scenario, redis_url)
    assert tombstone(redis_client, ledger, "e" * 32) is None
    assert redis_client.zcard(ledger.keys("agent")[5]) == 1  # the settled one stays


def test_a_lost_reservation_is_still_charged_when_settled(
    tmp_path: Path, server_kind: ServerKind
) -> None:
    """Redis restarted empty while a call was in flight: its real usage is recorded anyway."""
    server = start_redis(tmp_path, kind=server_kind)
    try:

        async def reserve(link: RedisLink) -> Reservation:
            ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
            return await ledger.reserve([AGENT], tokens=5_000, usd_nanos=70, ttl_seconds=30)

        reservation = run(reserve, server.url)
        server.stop()
        # not persistent: it comes back empty
        server = start_redis(tmp_path, port=server.port, kind=server_kind)

        async def settle(link: RedisLink) -> None:
            ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
            (state,) = await ledger.snapshot([AGENT])
            assert (state.tokens.reserved, state.tokens.used) == (0, 0)
            outcome = await ledger.settle(reservation, tokens=4_200, usd_nanos=60)
            assert outcome is SettleOutcome.RECORDED_WITHOUT_RESERVATION
            (state,) = await ledger.snapshot([AGENT])
            assert (state.tokens.used, state.usd_nanos.used, state.tokens.reserved) == (
                4_200,
                60,
                0,
            )
            # a repeat (the proxy retries settles until they land) is a no-op
            again = await ledger.settle(reservation, tokens=4_200, usd_nanos=60)
            assert again is SettleOutcome.ALREADY_SETTLED
            (state,) = await ledger.snapshot([AGENT])
            assert (state.tokens.used, state.usd_nanos.used) == (4_200, 60)
            # and what was recorded counts against the budget
            with pytest.raises(BudgetExceeded) as refusal:
                await ledger.reserve([AGENT], tokens=6_000, usd_nanos=0, ttl_seconds=30)
            assert refusal.value.used == 4_200

        run(settle, server.url)
    finally:
        server.stop()


def test_a_reserve_of_a_settled_id_reserves_nothing(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """A caller released an unconfirmed reservation (settle with zero) before its reserve
    landed: the late reserve must not create a reservation that nobody will settle."""

    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        unconfirmed = Reservation(
            id="c" * 32, scopes=("agent",), tokens=800, usd_nanos=8, expires_at=0.0
        )
        outcome = await ledger.settle(unconfirmed, tokens=0, usd_nanos=0)
        assert outcome is SettleOutcome.RECORDED_WITHOUT_RESERVATION
        with pytest.raises(LedgerUnavailable, match="settled already") as refusal:
            await ledger.reserve(
                [AGENT], tokens=800, usd_nanos=8, ttl_seconds=30, reservation_id="c" * 32
            )
        assert refusal.value.unconfirmed is None  # nothing was reserved: nothing to release
        (state,) = await ledger.snapshot([AGENT])
        assert (state.tokens.reserved, state.tokens.used, state.usd_nanos.used) == (0, 0, 0)
        # the same after a real settle
        spent = await ledger.reserve([AGENT], tokens=10, usd_nanos=0, ttl_seconds=30)
        await ledger.settle(spent, tokens=10, usd_nanos=0)
        with pytest.raises(LedgerUnavailable):
            await ledger.reserve(
                [AGENT], tokens=10, usd_nanos=0, ttl_seconds=30, reservation_id=spent.id
            )
        (state,) = await ledger.snapshot([AGENT])
        assert (state.tokens.reserved, state.tokens.used) == (0, 10)

    run(scenario, redis_url)
    assert not redis_client.hexists("kubeagents:{ns/writer}:agent:reservations", "c" * 32)


# --- clamping and healing: keys lost by eviction or by hand --------------------------------------


def assert_not_negative(state: Any) -> None:
    for kind in (state.tokens, state.usd_nanos):
        assert kind.used >= 0
        assert kind.reserved >= 0
        assert kind.remaining is None or kind.remaining >= 0


LIMIT_1000 = Scope("agent", token_limit=1_000, usd_nanos_limit=1_000)


@pytest.mark.parametrize(
    ("lost", "after_loss", "settled_as", "final_used"),
    [
        # rebuilt from the buckets and the reservations
        ("totals", (600, 100), SettleOutcome.SETTLED, 650),
        # the totals still count the spend (until its window passes)
        ("buckets", (600, 100), SettleOutcome.SETTLED, 650),
        # indexed again from the buckets
        ("bucket_starts", (600, 100), SettleOutcome.SETTLED, 650),
        # the record is gone: settle charges the real usage; the reserved total heals later
        ("reservations", (600, 100), SettleOutcome.RECORDED_WITHOUT_RESERVATION, 650),
        # a reservation without an expiry is charged in full at once
        ("reservation_expiry", (700, 0), SettleOutcome.ALREADY_SETTLED, 700),
        ("settled", (600, 100), SettleOutcome.SETTLED, 650),
    ],
)
def test_a_lost_key_never_makes_a_total_negative_nor_lets_an_overspend_through(
    redis_url: str,
    redis_client: redis.Redis,
    lost: str,
    after_loss: tuple[int, int],
    settled_as: SettleOutcome,
    final_used: int,
) -> None:
    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        spent = await ledger.reserve([LIMIT_1000], tokens=600, usd_nanos=600, ttl_seconds=30)
        await ledger.settle(spent, tokens=600, usd_nanos=600)
        outstanding = await ledger.reserve([LIMIT_1000], tokens=100, usd_nanos=100, ttl_seconds=30)
        await link.execute("DEL", f"kubeagents:{{ns/writer}}:agent:{lost}")

        (state,) = await ledger.snapshot([LIMIT_1000])
        assert_not_negative(state)
        assert (state.tokens.used, state.tokens.reserved) == after_loss
        assert (state.usd_nanos.used, state.usd_nanos.reserved) == after_loss
        # the spend that is still known keeps refusing what would go over the limit
        with pytest.raises(BudgetExceeded):
            await ledger.reserve([LIMIT_1000], tokens=400, usd_nanos=0, ttl_seconds=30)
        assert await ledger.settle(outstanding, tokens=50, usd_nanos=50) is settled_as
        (state,) = await ledger.snapshot([LIMIT_1000])
        assert_not_negative(state)
        assert (state.tokens.used, state.tokens.reserved) == (final_used, 0)
        assert (state.usd_nanos.used, state.usd_nanos.reserved) == (final_used, 0)
        with pytest.raises(BudgetExceeded):
            await ledger.reserve(
                [LIMIT_1000], tokens=1_000 - final_used + 1, usd_nanos=0, ttl_seconds=30
            )
        fits = await ledger.reserve(
            [LIMIT_1000], tokens=1_000 - final_used, usd_nanos=0, ttl_seconds=30
        )
        assert fits.tokens == 1_000 - final_used

    run(scenario, redis_url)


@pytest.mark.parametrize(
    "value", [b"-5000", b"12.5", b"garbage"], ids=["negative", "fraction", "garbage"]
)
def test_totals_that_are_not_counts_are_rebuilt(
    redis_url: str, redis_client: redis.Redis, value: bytes
) -> None:
    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(link, namespace="ns", agent="writer")
        spent = await ledger.reserve([LIMIT_1000], tokens=600, usd_nanos=0, ttl_seconds=30)
        await ledger.settle(spent, tokens=600, usd_nanos=0)
        await link.execute("HSET", ledger.keys("agent")[0], "used_tokens", value)
        await link.execute("HSET", ledger.keys("agent")[0], "reserved_usd", value)
        (state,) = await ledger.snapshot([LIMIT_1000])
        assert_not_negative(state)
        assert (state.tokens.used, state.tokens.reserved, state.usd_nanos.reserved) == (600, 0, 0)
        with pytest.raises(BudgetExceeded):
            await ledger.reserve([LIMIT_1000], tokens=401, usd_nanos=0, ttl_seconds=30)

    run(scenario, redis_url)
    totals = redis_client.hgetall("kubeagents:{ns/writer}:agent:totals")
    assert totals[b"used_tokens"] == b"600"
    assert totals[b"reserved_usd"] == b"0"


def test_negative_amounts_stored_in_buckets_and_records_count_as_zero(redis_url: str) -> None:
    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(
            link, namespace="ns", agent="writer", window_seconds=2, bucket_seconds=1
        )
        keys = ledger.keys("agent")
        now = int(await redis_seconds(link))
        await link.execute("HSET", keys[1], f"{now}:tokens", -700, f"{now}:usd", 300)
        await link.execute("ZADD", keys[2], now, now)
        await link.execute("HSET", keys[3], "d" * 32, "-5 x")
        await link.execute("ZADD", keys[4], (now + 60) * 1000, "d" * 32)
        (state,) = await ledger.snapshot([LIMIT_1000])  # rebuilds the missing totals
        assert_not_negative(state)
        assert (state.tokens.used, state.usd_nanos.used) == (0, 300)
        assert (state.tokens.reserved, state.usd_nanos.reserved) == (0, 0)

        async def aged_out() -> bool:  # the bucket leaves the window: nothing goes below 0
            (state,) = await ledger.snapshot([LIMIT_1000])
            assert_not_negative(state)
            return state.usd_nanos.used == 0

        await poll(aged_out, within=15, what="the bucket to leave the window")

    run(scenario, redis_url)


def test_lost_buckets_count_until_their_window_has_passed(
    redis_url: str, redis_client: redis.Redis
) -> None:
    scope = Scope("agent", token_limit=1_000, usd_nanos_limit=None)

    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(
            link, namespace="ns", agent="writer", window_seconds=2, bucket_seconds=1
        )
        spent = await ledger.reserve([scope], tokens=900, usd_nanos=0, ttl_seconds=30)
        await ledger.settle(spent, tokens=900, usd_nanos=0)
        await link.execute("DEL", ledger.keys("agent")[1])  # the buckets

        async def freed() -> bool:
            (state,) = await ledger.snapshot([scope])
            assert_not_negative(state)
            if state.tokens.used:
                assert state.tokens.used == 900  # counted, conservatively, until it ages out
            return state.tokens.used == 0

        await poll(freed, within=15, what="the lost spend to age out")
        assert (await ledger.reserve([scope], tokens=1_000, usd_nanos=0, ttl_seconds=30)).tokens

    run(scenario, redis_url)


# --- durable reservations (WAIT) -----------------------------------------------------------------


@dataclass
class Replicated:
    master: RedisServer
    replica: RedisServer


@pytest.fixture
def replicated(tmp_path: Path, server_kind: ServerKind) -> Iterator[Replicated]:
    """A master and one replica of it (`REPLICAOF`), in sync."""
    master = start_redis(tmp_path / "master", kind=server_kind)
    replica = start_redis(tmp_path / "replica", kind=server_kind)
    try:
        with master.client() as client:
            client.config_set("repl-diskless-sync-delay", 0)  # start the first sync at once
        with replica.client() as client:
            client.replicaof("127.0.0.1", master.port)
        with master.client() as m, replica.client() as r:

            def in_sync() -> bool:
                info = m.info("replication")
                return bool(
                    r.info("replication")["master_link_status"] == "up"
                    and info["connected_slaves"] == 1
                    and info["slave0"]["state"] == "online"
                )

            wait_for(in_sync, timeout=20, what="the replica to sync with the master")
        yield Replicated(master, replica)
    finally:
        replica.stop()
        master.stop()


def test_a_durable_reserve_waits_until_the_replica_has_it(
    replicated: Replicated, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []

    async def scenario(link: RedisLink) -> tuple[BudgetLedger, Reservation]:
        ledger = BudgetLedger.for_agent(
            link,
            namespace="ns",
            agent="writer",
            durable_replicas=1,
            durable_timeout_ms=4_000,  # WAIT answers as soon as the replica acknowledges
        )
        await ledger.snapshot([AGENT])  # loads the script
        execute: Callable[..., Awaitable[Any]] = link.execute

        async def recording(*args: Any) -> Any:
            events.append(f"send {args[0]}")
            reply = await execute(*args)
            events.append(f"reply {args[0]}")
            return reply

        monkeypatch.setattr(link, "execute", recording)
        reservation = await ledger.reserve([AGENT], tokens=100, usd_nanos=1, ttl_seconds=30)
        # pipelined: WAIT is sent before the script's reply is awaited
        assert events == ["send EVALSHA", "send WAIT", "reply EVALSHA", "reply WAIT"]
        await ledger.settle(reservation, tokens=60, usd_nanos=1)
        assert events[4:] == ["send EVALSHA", "reply EVALSHA"]  # settles do not wait
        return ledger, reservation

    with replicated.master.client() as master:
        master.config_resetstat()
        ledger, reservation = run(scenario, replicated.master.url)
        assert master.info("commandstats")["cmdstat_wait"]["calls"] == 1
    with replicated.replica.client() as replica:
        # acknowledged means the replica has applied the reservation (and here the settle too,
        # as replication keeps order; poll for that one, it was not waited for)
        wait_for(
            lambda: replica.zscore(ledger.keys("agent")[5], reservation.id) is not None,
            timeout=10,
            what="the settle to reach the replica",
        )


def test_a_durably_reserved_reservation_is_on_the_replica_when_reserve_returns(
    replicated: Replicated,
) -> None:
    with replicated.replica.client() as replica:

        async def scenario(link: RedisLink) -> None:
            ledger = BudgetLedger.for_agent(
                link, namespace="ns", agent="writer", durable_replicas=1, durable_timeout_ms=4_000
            )
            for _ in range(20):
                reservation = await ledger.reserve([AGENT], tokens=10, usd_nanos=0, ttl_seconds=30)
                assert replica.hget(ledger.keys("agent")[3], reservation.id) == b"10 0"

        run(scenario, replicated.master.url)


def test_a_reserve_too_few_replicas_acknowledge_is_released(replicated: Replicated) -> None:
    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(
            link, namespace="ns", agent="writer", durable_replicas=2, durable_timeout_ms=50
        )
        with pytest.raises(LedgerUnavailable) as refusal:
            await ledger.reserve([AGENT], tokens=100, usd_nanos=1, ttl_seconds=30)
        message = str(refusal.value)
        assert message.startswith("reservation not acknowledged by 2 replica(s) within 50 ms (got ")
        assert message.endswith(")")
        unconfirmed = refusal.value.unconfirmed
        assert unconfirmed is not None
        assert (unconfirmed.tokens, unconfirmed.usd_nanos) == (100, 1)
        (state,) = await ledger.snapshot([AGENT])
        assert (state.tokens.reserved, state.tokens.used, state.usd_nanos.reserved) == (0, 0, 0)
        # released for good: the caller's own release is a no-op
        assert await ledger.settle(unconfirmed, tokens=0, usd_nanos=0) is (
            SettleOutcome.ALREADY_SETTLED
        )

    run(scenario, replicated.master.url)


def test_a_durable_reserve_fails_closed_when_the_replica_is_down(replicated: Replicated) -> None:
    async def scenario(link: RedisLink) -> None:
        patient, hasty = (
            BudgetLedger.for_agent(
                link, namespace="ns", agent="writer", durable_replicas=1, durable_timeout_ms=ms
            )
            for ms in (4_000, 100)
        )
        await patient.reserve([AGENT], tokens=100, usd_nanos=1, ttl_seconds=30)  # replica up
        replicated.replica.stop()
        with pytest.raises(LedgerUnavailable, match=r"by 1 replica\(s\) within 100 ms \(got 0\)"):
            await hasty.reserve([AGENT], tokens=200, usd_nanos=1, ttl_seconds=30)
        (state,) = await hasty.snapshot([AGENT])
        assert state.tokens.reserved == 100  # only the first, acknowledged one

    run(scenario, replicated.master.url)


def test_a_durable_reserve_on_a_server_without_the_script_loads_it_and_waits_again(
    replicated: Replicated,
) -> None:
    async def scenario(link: RedisLink) -> None:
        ledger = BudgetLedger.for_agent(
            link, namespace="ns", agent="writer", durable_replicas=1, durable_timeout_ms=4_000
        )
        await link.execute("SCRIPT", "FLUSH")  # e.g. a restarted or failed-over server
        with replicated.master.client() as master, replicated.replica.client() as replica:
            master.config_resetstat()
            reservation = await ledger.reserve([AGENT], tokens=10, usd_nanos=0, ttl_seconds=30)
            # the WAIT behind the refused EVALSHA covered nothing: it was sent again
            assert master.info("commandstats")["cmdstat_wait"]["calls"] == 2
            assert replica.hget(ledger.keys("agent")[3], reservation.id) == b"10 0"

    run(scenario, replicated.master.url)
