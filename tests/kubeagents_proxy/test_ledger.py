"""The rolling budget ledger (kubeagents_proxy.ledger) against a real redis-server."""

from __future__ import annotations

import asyncio
import math
import random
import sys
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import redis
import redis.asyncio
import redis.exceptions

from harness.processes import ManagedProcess, poll
from harness.redis_servers import start_redis
from kubeagents_proxy.ledger import (
    BudgetExceeded,
    BudgetLedger,
    LedgerUnavailable,
    Reservation,
    Scope,
    SettleOutcome,
)

T = TypeVar("T")

AGENT = Scope("agent", token_limit=10_000, usd_nanos_limit=1_000_000_000)  # 10k tokens, $1


def run(factory: Callable[[redis.asyncio.Redis], Coroutine[Any, Any, T]], url: str) -> T:
    """Run `factory(client)` in a fresh event loop with a fresh client, closed afterwards."""

    async def main() -> T:
        client = redis.asyncio.Redis.from_url(url)
        try:
            return await factory(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def dump_all(client: redis.Redis) -> dict[Any, tuple[Any, Any, int]]:
    """Every key with its type, serialized value and absolute expiry."""
    return {
        key: (client.type(key), client.dump(key), client.pexpiretime(key))
        for key in client.scan_iter()
    }


async def newest_bucket(ledger: BudgetLedger, scope: str = "agent") -> int:
    """The start (unix s) of the newest bucket holding spend of `scope`."""
    starts_key = ledger.keys(scope)[2]
    client = cast(redis.asyncio.Redis, ledger.redis)
    starts = cast(list[bytes], await client.zrange(starts_key, 0, -1))
    return max(int(start) for start in starts)


async def redis_seconds(client: redis.asyncio.Redis) -> float:
    seconds, micros = await client.time()
    return float(seconds) + micros / 1e6


# --- reserve ----------------------------------------------------------------------------------


def test_reserve_within_budget_succeeds_and_reserves_in_every_scope(redis_url: str) -> None:
    run_scope = Scope("run:r1", token_limit=5_000, usd_nanos_limit=None)

    async def scenario(client: redis.asyncio.Redis) -> None:
        ledger = BudgetLedger(client, namespace="ns", agent="writer")
        before = await redis_seconds(client)
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
    async def spend(client: redis.asyncio.Redis) -> None:
        ledger = BudgetLedger(client, namespace="ns", agent="writer")
        done = await ledger.reserve([AGENT], tokens=9_000, usd_nanos=900_000_000, ttl_seconds=30)
        await ledger.settle(done, tokens=8_000, usd_nanos=800_000_000)
        await ledger.reserve([AGENT], tokens=1_000, usd_nanos=100_000_000, ttl_seconds=30)

    run(spend, redis_url)
    before = dump_all(redis_client)

    async def refused(client: redis.asyncio.Redis) -> BudgetExceeded:
        ledger = BudgetLedger(client, namespace="ns", agent="writer")
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

    async def scenario(client: redis.asyncio.Redis) -> BudgetExceeded:
        ledger = BudgetLedger(client, namespace="ns", agent="writer")
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

    async def scenario(client: redis.asyncio.Redis) -> BudgetExceeded:
        ledger = BudgetLedger(client, namespace="ns", agent="writer")
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

    async def scenario(client: redis.asyncio.Redis) -> None:
        ledger = BudgetLedger(client, namespace="ns", agent="writer")
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
    async def first(client: redis.asyncio.Redis) -> Reservation:
        ledger = BudgetLedger(client, namespace="ns", agent="writer")
        reservation = await ledger.reserve([AGENT], tokens=1_000, usd_nanos=10, ttl_seconds=30)
        assert await ledger.settle(reservation, tokens=700, usd_nanos=7) is SettleOutcome.SETTLED
        return reservation

    reservation = run(first, redis_url)
    before = dump_all(redis_client)

    async def again(client: redis.asyncio.Redis) -> None:
        ledger = BudgetLedger(client, namespace="ns", agent="writer")
        outcome = await ledger.settle(reservation, tokens=5_000, usd_nanos=50)
        assert outcome is SettleOutcome.ALREADY_SETTLED_OR_EXPIRED
        (agent,) = await ledger.snapshot([AGENT])
        assert (agent.tokens.used, agent.usd_nanos.used) == (700, 7)

    run(again, redis_url)
    assert dump_all(redis_client) == before


def test_settle_over_the_reserved_amount_is_charged_in_full(redis_url: str) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        ledger = BudgetLedger(client, namespace="ns", agent="writer")
        reservation = await ledger.reserve([AGENT], tokens=9_000, usd_nanos=10, ttl_seconds=30)
        await ledger.settle(reservation, tokens=12_000, usd_nanos=2_000_000_000)
        (agent,) = await ledger.snapshot([AGENT])
        assert (agent.tokens.used, agent.usd_nanos.used) == (12_000, 2_000_000_000)
        assert agent.tokens.remaining == agent.usd_nanos.remaining == 0  # floored at 0
        with pytest.raises(BudgetExceeded) as refusal:
            await ledger.reserve([AGENT], tokens=1, usd_nanos=0, ttl_seconds=30)
        assert refusal.value.used == 12_000

    run(scenario, redis_url)


# --- expiry and extend --------------------------------------------------------------------------


def test_unsettled_reservation_is_charged_in_full_by_the_next_call_after_expiry(
    redis_url: str,
) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        ledger = BudgetLedger(client, namespace="ns", agent="writer")
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
        assert await redis_seconds(client) >= reservation.expires_at
        outcome = await ledger.settle(reservation, tokens=10, usd_nanos=10)
        assert outcome is SettleOutcome.ALREADY_SETTLED_OR_EXPIRED
        assert await ledger.extend(reservation, ttl_seconds=30) is False
        assert await charged()

    run(scenario, redis_url)


def test_expired_reservation_is_charged_by_a_reserve_too(redis_url: str) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        ledger = BudgetLedger(client, namespace="ns", agent="writer")
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
        assert await ledger.settle(lost, tokens=0, usd_nanos=0) is (
            SettleOutcome.ALREADY_SETTLED_OR_EXPIRED
        )

    run(scenario, redis_url)


def test_extend_pushes_the_expiry_of_a_live_reservation(redis_url: str) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        ledger = BudgetLedger(client, namespace="ns", agent="writer")
        reservation = await ledger.reserve([AGENT], tokens=1_000, usd_nanos=0, ttl_seconds=1.5)
        assert await ledger.extend(reservation, ttl_seconds=60) is True
        # well past the original expiry, the reservation is still outstanding, not charged
        await poll(
            partial(_after, client, reservation.expires_at + 0.3),
            within=10,
            what="the original expiry to pass",
        )
        (agent,) = await ledger.snapshot([AGENT])
        assert (agent.tokens.reserved, agent.tokens.used) == (1_000, 0)
        assert await ledger.settle(reservation, tokens=400, usd_nanos=0) is SettleOutcome.SETTLED
        assert await ledger.extend(reservation, ttl_seconds=60) is False

    run(scenario, redis_url)


async def _after(client: redis.asyncio.Redis, moment: float) -> bool:
    return await redis_seconds(client) >= moment


def test_killed_proxy_cannot_leak_its_reservation(redis_url: str, tmp_path: Path) -> None:
    """A process that reserved and was killed with SIGKILL: its reservation is charged."""
    child = (
        "import asyncio, sys, redis.asyncio\n"
        "from kubeagents_proxy.ledger import BudgetLedger, Scope\n"
        "async def main():\n"
        "    client = redis.asyncio.Redis.from_url(sys.argv[1])\n"
        "    ledger = BudgetLedger(client, namespace='ns', agent='writer')\n"
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

    async def scenario(client: redis.asyncio.Redis) -> None:
        ledger = BudgetLedger(client, namespace="ns", agent="writer")

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

    async def scenario(client: redis.asyncio.Redis) -> None:
        ledger = BudgetLedger(
            client, namespace="ns", agent="writer", window_seconds=4, bucket_seconds=1
        )
        first = await ledger.reserve([scope], tokens=600, usd_nanos=0, ttl_seconds=30)
        await ledger.settle(first, tokens=600, usd_nanos=0)
        # a later bucket, so that only the older spend has to age out
        await poll(partial(_after, client, await newest_bucket(ledger) + 1.0), within=10, what="1s")
        second = await ledger.reserve([scope], tokens=300, usd_nanos=0, ttl_seconds=30)
        await ledger.settle(second, tokens=300, usd_nanos=0)

        before = await redis_seconds(client)
        with pytest.raises(BudgetExceeded) as refusal:
            await ledger.reserve([scope], tokens=500, usd_nanos=0, ttl_seconds=30)
        after = await redis_seconds(client)
        error = refusal.value
        assert (error.used, error.reserved, error.limit) == (900, 0, 1_000)
        retry_after = error.retry_after
        assert retry_after is not None
        assert 1 <= retry_after <= 5  # within window + bucket

        async def fits() -> float | None:
            (state,) = await ledger.snapshot([scope])
            if state.tokens.remaining is not None and state.tokens.remaining >= 500:
                return await redis_seconds(client)
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

    async def scenario(client: redis.asyncio.Redis) -> None:
        ledger = BudgetLedger(
            client, namespace="ns", agent="writer", window_seconds=6, bucket_seconds=1
        )
        bucket_of: dict[int, int] = {}
        for amount in (100, 200, 600):  # three buckets, one after the other
            spent = await ledger.reserve([scope], tokens=amount, usd_nanos=0, ttl_seconds=30)
            await ledger.settle(spent, tokens=amount, usd_nanos=0)
            newest = await newest_bucket(ledger)
            bucket_of[amount] = newest
            await poll(partial(_after, client, newest + 1.0), within=10, what="next bucket")
        assert len(set(bucket_of.values())) == 3

        before = await redis_seconds(client)
        with pytest.raises(BudgetExceeded) as refusal:
            # needs 900 + 350 - 1000 = 250 freed: the 100 bucket is not enough, 100 + 200 is
            await ledger.reserve([scope], tokens=350, usd_nanos=0, ttl_seconds=30)
        after = await redis_seconds(client)
        leaves = bucket_of[200] + 1 + 6  # the bucket's start + bucket + window
        assert refusal.value.retry_after is not None
        assert math.ceil(leaves - after) <= refusal.value.retry_after <= math.ceil(leaves - before)

    run(scenario, redis_url)


def test_request_larger_than_the_limit_never_fits(redis_url: str) -> None:
    async def scenario(client: redis.asyncio.Redis) -> None:
        ledger = BudgetLedger(client, namespace="ns", agent="writer")
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
    async def scenario(client: redis.asyncio.Redis) -> None:
        ledger = BudgetLedger(client, namespace="ns", agent="writer")
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

    async def scenario(client: redis.asyncio.Redis) -> None:
        ledger = BudgetLedger(client, namespace="ns", agent="writer", window_seconds=3600)
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

    async def scenario(client: redis.asyncio.Redis) -> float:
        ledger = BudgetLedger(client, namespace="team-a", agent="writer", window_seconds=600)
        spent = await ledger.reserve([AGENT, run_scope], tokens=10, usd_nanos=1, ttl_seconds=90)
        await ledger.settle(spent, tokens=10, usd_nanos=1)
        await ledger.reserve([AGENT, run_scope], tokens=10, usd_nanos=1, ttl_seconds=120)
        return await redis_seconds(client)

    now = run(scenario, redis_url)
    ledger = BudgetLedger(redis.asyncio.Redis(), namespace="team-a", agent="writer")
    expected = set(ledger.keys("agent") + ledger.keys("run:r-1.a/b"))
    stored = {key.decode() for key in redis_client.scan_iter()}
    assert stored == expected
    for key in stored:
        assert key.startswith("kubeagents:{team-a/writer}:")
        # the outstanding reservation's expiry (120 s) + window (600 s) + bucket (60 s) + 60 s
        expires = redis_client.pexpiretime(key) / 1000
        assert now + 835 <= expires <= now + 840.01


def test_each_operation_is_one_evalsha_round_trip(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def warm_up(client: redis.asyncio.Redis) -> None:
        await BudgetLedger(client, namespace="ns", agent="writer").snapshot([AGENT])

    run(warm_up, redis_url)  # loads the script into the server (SCRIPT LOAD)
    redis_client.config_resetstat()
    sent: list[str] = []

    async def scenario(client: redis.asyncio.Redis) -> None:
        execute: Callable[..., Awaitable[Any]] = client.execute_command

        async def counting(*args: Any, **options: Any) -> Any:
            sent.append(str(args[0]))
            return await execute(*args, **options)

        monkeypatch.setattr(client, "execute_command", counting)
        ledger = BudgetLedger(client, namespace="ns", agent="writer")
        reservation = await ledger.reserve([AGENT], tokens=100, usd_nanos=1, ttl_seconds=30)
        assert sent == ["EVALSHA"]
        await ledger.settle(reservation, tokens=50, usd_nanos=1)
        assert sent == ["EVALSHA", "EVALSHA"]

    run(scenario, redis_url)
    stats = redis_client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 2
    assert "cmdstat_eval" not in stats  # the script source is never sent per call
    assert "cmdstat_script|load" not in stats  # nor loaded again


def test_a_lost_reply_retried_with_the_same_id_reserves_only_once(redis_url: str) -> None:
    """redis-py retries a command whose reply was lost; the script must not reserve twice."""

    async def scenario(client: redis.asyncio.Redis) -> None:
        ledger = BudgetLedger(client, namespace="ns", agent="writer")
        args = ("f" * 32, 700, 5, 30_000, "10000", "1000000000")
        first = await ledger._call("reserve", ["agent"], *args)
        second = await ledger._call("reserve", ["agent"], *args)
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
        clients = [
            redis.asyncio.Redis(
                connection_pool=redis.asyncio.BlockingConnectionPool.from_url(
                    redis_url, max_connections=40
                )
            )
            for _ in range(3)
        ]
        ledgers = [BudgetLedger(c, namespace="ns", agent="writer") for c in clients]
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
        for client in clients:
            await client.aclose()

    asyncio.run(main())


# --- failures and validation ----------------------------------------------------------------------


def test_redis_down_raises_ledger_unavailable(tmp_path: Path) -> None:
    server = start_redis(tmp_path)
    try:

        async def up(client: redis.asyncio.Redis) -> Reservation:
            ledger = BudgetLedger(client, namespace="ns", agent="writer")
            await ledger.ping()
            return await ledger.reserve([AGENT], tokens=10, usd_nanos=1, ttl_seconds=30)

        reservation = run(up, server.url)
    finally:
        server.stop()

    async def down(client: redis.asyncio.Redis) -> None:
        ledger = BudgetLedger(client, namespace="ns", agent="writer")
        with pytest.raises(LedgerUnavailable) as error:
            await ledger.ping()
        assert isinstance(error.value.__cause__, redis.exceptions.ConnectionError)
        with pytest.raises(LedgerUnavailable) as refused:
            await ledger.reserve([AGENT], tokens=10, usd_nanos=1, ttl_seconds=30)
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
            await ledger.extend(reservation, ttl_seconds=30)
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
        (lambda ledger: ledger.extend(_reservation(), ttl_seconds=0), "ttl_seconds"),
    ],
)
def test_invalid_input_raises_value_error_before_touching_redis(
    call: Callable[[BudgetLedger], Awaitable[object]], argument: str
) -> None:
    async def scenario() -> None:
        # a client of a port nothing listens on: any Redis call would raise LedgerUnavailable
        client = redis.asyncio.Redis(port=1)
        ledger = BudgetLedger(client, namespace="ns", agent="writer")
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
        (lambda: BudgetLedger(redis.asyncio.Redis(), namespace="a/b", agent="x"), "namespace"),
        (lambda: BudgetLedger(redis.asyncio.Redis(), namespace="a", agent="{x}"), "agent"),
        (
            lambda: BudgetLedger(
                redis.asyncio.Redis(),
                namespace="a",
                agent="x",
                window_seconds=100,
                bucket_seconds=30,
            ),
            "window_seconds",
        ),
        (
            lambda: BudgetLedger(redis.asyncio.Redis(), namespace="a", agent="x", bucket_seconds=0),
            "bucket_seconds",
        ),
    ],
)
def test_invalid_scope_or_ledger_settings_raise_value_error(
    make: Callable[[], object], argument: str
) -> None:
    with pytest.raises(ValueError, match=argument):
        make()
