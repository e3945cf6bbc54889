"""Budget accounting of one call: reserve its worst case before, settle its real usage after.

Settlement must land even when Redis blips: it is retried in the background with backoff until
Redis answers, or until the reservation's own expiry (after which the ledger has charged it in
full anyway, which is never less than was used).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from kubeagents_proxy.errors import InvalidRequest, LedgerDown, RateLimited
from kubeagents_proxy.ledger import (
    BudgetExceeded,
    BudgetLedger,
    LedgerUnavailable,
    Reservation,
    Scope,
)
from kubeagents_proxy.metrics import ProxyMetrics

log = logging.getLogger("kubeagents.proxy")
NANOS_PER_USD = Decimal(1_000_000_000)
SETTLE_ATTEMPT_SECONDS = 5.0
SETTLE_BACKOFF_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
_RUN_ID = re.compile(r"^[A-Za-z0-9._/-]{1,150}$")


def usd_to_nanos(usd: Decimal) -> int:
    return int(usd * NANOS_PER_USD)


def parse_run_budget(header: str) -> Scope:
    """`run=<id>; tokens=<n>; usd=<x>` (tokens and usd optional) -> the run's budget scope."""
    fields: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if not sep or not value.strip():
            raise InvalidRequest(f"kubeagents-run-budget: {part.strip()!r} is not name=value")
        fields[name.strip().lower()] = value.strip()
    unknown = set(fields) - {"run", "tokens", "usd"}
    if unknown:
        raise InvalidRequest(
            f"kubeagents-run-budget: unknown field(s) {', '.join(sorted(unknown))}"
        )
    run = fields.get("run", "")
    if not _RUN_ID.fullmatch(run):
        raise InvalidRequest("kubeagents-run-budget: run must match [A-Za-z0-9._/-]{1,150}")
    try:
        tokens = int(fields["tokens"]) if "tokens" in fields else None
        usd = Decimal(fields["usd"]) if "usd" in fields else None
    except (ValueError, ArithmeticError):
        raise InvalidRequest(
            "kubeagents-run-budget: tokens must be an integer, usd a number"
        ) from None
    if (tokens is not None and tokens < 1) or (usd is not None and not usd > 0):
        raise InvalidRequest("kubeagents-run-budget: tokens and usd must be positive")
    return Scope(
        name=f"run:{run}",
        token_limit=tokens,
        usd_nanos_limit=usd_to_nanos(usd) if usd is not None else None,
    )


@dataclass(frozen=True)
class Charge:
    """What a call reserved, so that it can be settled."""

    reservation: Reservation | None  # None: no budgets, or unmetered (fail-open)
    tokens: int
    usd_nanos: int


class Accountant:
    """Reserves and settles calls against the agent's (and the run's) rolling budgets."""

    def __init__(
        self,
        ledger: BudgetLedger | None,
        *,
        agent: str,
        agent_scope: Scope | None,
        reservation_ttl_seconds: float,
        fail_open: bool,
        metrics: ProxyMetrics,
    ) -> None:
        self.ledger = ledger
        self.agent = agent
        self.agent_scope = agent_scope
        self.ttl = reservation_ttl_seconds
        self.fail_open = fail_open
        self.metrics = metrics
        self._pending: set[asyncio.Task[None]] = set()

    def scopes(self, run_scope: Scope | None) -> list[Scope]:
        scopes = [self.agent_scope] if self.agent_scope is not None else []
        if run_scope is not None:
            scopes.append(run_scope)
        return scopes

    async def reserve(self, scopes: Sequence[Scope], *, tokens: int, usd_nanos: int) -> Charge:
        """Reserve the call's worst case in every scope at once, or refuse it."""
        if self.ledger is None or not scopes:
            return Charge(None, tokens, usd_nanos)
        try:
            reservation = await self.ledger.reserve(
                scopes, tokens=tokens, usd_nanos=usd_nanos, ttl_seconds=self.ttl
            )
        except BudgetExceeded as refused:
            message = str(refused).replace("of scope agent ", f"of agent {self.agent} ", 1)
            if refused.never_fits:
                raise InvalidRequest(message) from None
            raise RateLimited(
                message, reason=f"budget_{refused.kind}", retry_after=refused.retry_after
            ) from None
        except Exception as error:  # any failure of the ledger fails closed
            if not isinstance(error, LedgerUnavailable):
                log.exception("budget ledger failed unexpectedly")
            elif error.unconfirmed is not None:
                # It may have been recorded: release it rather than let it expire into a charge.
                self.settle(Charge(error.unconfirmed, 0, 0), tokens=0, usd_nanos=0)
            if self.fail_open:
                log.warning("budget ledger unavailable, call let through unmetered: %s", error)
                return Charge(None, tokens, usd_nanos)
            raise LedgerDown(f"budget ledger unavailable: {error}") from None
        return Charge(reservation, tokens, usd_nanos)

    def settle(self, charge: Charge, *, tokens: int, usd_nanos: int) -> None:
        """Replace the reservation by the real spend; retried in the background until it lands."""
        if charge.reservation is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._settle_until_landed(charge.reservation, tokens, usd_nanos)
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle_until_landed(self, reservation: Reservation, tokens: int, usd: int) -> None:
        assert self.ledger is not None
        attempt = 0
        try:
            while True:
                try:
                    async with asyncio.timeout(SETTLE_ATTEMPT_SECONDS):
                        await self.ledger.settle(reservation, tokens=tokens, usd_nanos=usd)
                    return
                except Exception as error:  # noqa: BLE001 - whatever failed, retry until it lands
                    if time.time() > reservation.expires_at:
                        # The ledger has charged the whole reservation by now: nothing is lost.
                        log.warning(
                            "settlement of %s given up after expiry: %s", reservation.id, error
                        )
                        return
                    if attempt == 0:
                        self.metrics.settlements_pending.inc()
                    await asyncio.sleep(
                        SETTLE_BACKOFF_SECONDS[min(attempt, len(SETTLE_BACKOFF_SECONDS) - 1)]
                    )
                    attempt += 1
        finally:
            if attempt:
                self.metrics.settlements_pending.dec()

    async def drain(self) -> None:
        """Wait for settlements still in flight (at shutdown; bound it with asyncio.timeout)."""
        if self._pending:
            await asyncio.wait(self._pending)
