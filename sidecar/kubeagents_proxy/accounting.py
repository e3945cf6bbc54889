"""Budget accounting of one call: reserve its worst case before, settle its real usage after.

Scopes. A call is charged to its agent's rolling budget (the `agent` scope, in the agent's
ledger) and, when it names a team run (`kubeagents-run-budget`), to the run's budget (the run's
own ledger under the run's hash tag, shared by every agent and proxy of the run; on Redis
Cluster possibly on another node). They are reserved scope by scope, agent first: when a later
scope refuses, the earlier reservations are released. No scope is ever over-reserved, because
each reservation is atomic in its own scope; a refused call only held budget for a moment.

A run's limit is fixed by the first call that names it with a limit; later calls may name the
run alone (they get the stored limit) or the same limit, never another (400).

Attempts. An upstream attempt that may have been billed (a 5xx other than 529) is charged in
full before the proxy retries, and the retry reserves its own worst case first; when that
reservation is refused, the failed answer goes back to the client instead.

Settlement must land even when Redis blips: it is retried in the background with backoff until
Redis answers, or until the reservation's own expiry (after which the ledger has charged it in
full anyway, which is never less than was used). A settle that finds its reservation lost (a
Redis that restarted empty, a failover) still records the real usage (see ledger.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from kubeagents.backoff import Backoff
from kubeagents.redis_link import RedisLink
from kubeagents_proxy.errors import (
    BudgetExceeded,
    InvalidRequest,
    LedgerDown,
    LedgerUnavailable,
    LimitMismatch,
    NotPriced,
    RateLimited,
    Unpriced,
)
from kubeagents_proxy.ledger import MAX_AMOUNT, BudgetLedger, Reservation, Scope
from kubeagents_proxy.metrics import ProxyMetrics
from kubeagents_proxy.prices import NANOS_PER_USD

log = logging.getLogger("kubeagents.proxy")
SETTLE_ATTEMPT_SECONDS = 5.0
SETTLE_BACKOFF = Backoff(base=0.05, cap=5.0)
RUN_LEDGER_CACHE = 64
_RUN_ID = re.compile(r"^[A-Za-z0-9._/-]{1,150}$")
RUN_SCOPE = "run"
STEP_SCOPE_PREFIX = "step:"
_STEP = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class RunBudget:
    """A `kubeagents-run-budget` header: the run and the limits it names (None: not named)."""

    run: str
    token_limit: int | None
    usd_nanos_limit: int | None
    step: str = ""  # the run's step the call belongs to (its cost is metered apart too)

    @property
    def scope(self) -> Scope:
        return Scope(
            RUN_SCOPE,
            token_limit=self.token_limit,
            usd_nanos_limit=self.usd_nanos_limit,
            fixed_limits=True,
        )

    @property
    def scopes(self) -> list[Scope]:
        """The run's scope, and its step's (`step:<name>`, no limits: it only meters what the
        step cost; the operator reads it for the step's status)."""
        step = [Scope(f"{STEP_SCOPE_PREFIX}{self.step}", None, None)] if self.step else []
        return [self.scope, *step]


def parse_run_budget(header: str) -> RunBudget:
    """`run=<id>; tokens=<n>; usd=<x>` (tokens and usd optional) -> the run's budget."""
    fields: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if not sep or not value.strip():
            raise InvalidRequest(f"kubeagents-run-budget: {part.strip()!r} is not name=value")
        fields[name.strip().lower()] = value.strip()
    unknown = set(fields) - {"run", "tokens", "usd", "step"}
    if unknown:
        raise InvalidRequest(
            f"kubeagents-run-budget: unknown field(s) {', '.join(sorted(unknown))}"
        )
    run = fields.get("run", "")
    if not _RUN_ID.fullmatch(run):
        raise InvalidRequest("kubeagents-run-budget: run must match [A-Za-z0-9._/-]{1,150}")
    tokens = usd_nanos = None
    if "tokens" in fields:
        raw = fields["tokens"]
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_AMOUNT:
            raise InvalidRequest(
                f"kubeagents-run-budget: tokens must be an integer from 1 to {MAX_AMOUNT:,}, "
                f"not {raw!r}"
            )
        tokens = int(raw)
    if "usd" in fields:
        raw = fields["usd"]
        try:
            usd = Decimal(raw)
            valid = usd.is_finite() and usd > 0
        except InvalidOperation:
            valid = False
        max_usd = Decimal(MAX_AMOUNT) / NANOS_PER_USD
        if not valid or usd > max_usd:
            raise InvalidRequest(
                f"kubeagents-run-budget: usd must be a number above 0 and at most "
                f"{max_usd:,.0f}, not {raw!r}"
            )
        usd_nanos = max(1, math.floor(usd * NANOS_PER_USD))
    step = fields.get("step", "")
    if "step" in fields and not _STEP.fullmatch(step):
        raise InvalidRequest("kubeagents-run-budget: step must be a DNS label (a step's name)")
    return RunBudget(run=run, token_limit=tokens, usd_nanos_limit=usd_nanos, step=step)


@dataclass
class Charge:
    """What a call holds in the ledgers: one reservation per scope for the current attempt."""

    tokens: int
    usd_nanos: int | None  # None: the call has no price
    held: list[tuple[BudgetLedger, Reservation]] = field(default_factory=list)
    run: RunBudget | None = None


class Accountant:
    """Reserves and settles calls against the agent's (and the run's) rolling budgets."""

    def __init__(
        self,
        ledger: BudgetLedger | None,
        *,
        agent: str,
        namespace: str,
        agent_scope: Scope | None,
        run_links: Callable[[str], RedisLink] | None,
        reservation_ttl_seconds: float,
        fail_open: bool,
        metrics: ProxyMetrics,
        durable_replicas: int = 0,
        durable_timeout_ms: int = 100,
    ) -> None:
        self.ledger = ledger
        self.agent = agent
        self.namespace = namespace
        self.agent_scope = agent_scope
        self.run_links = run_links
        self.ttl = reservation_ttl_seconds
        self.fail_open = fail_open
        self.metrics = metrics
        self.durable_replicas = durable_replicas
        self.durable_timeout_ms = durable_timeout_ms
        self._run_ledgers: OrderedDict[str, BudgetLedger] = OrderedDict()
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def metering(self) -> bool:
        return self.ledger is not None

    def run_ledger(self, run: str) -> BudgetLedger | None:
        """The ledger of a team run (cached: a run's calls come in bursts)."""
        if self.run_links is None:
            return None
        ledger = self._run_ledgers.get(run)
        if ledger is None:
            ledger = BudgetLedger.for_run(
                self.run_links(run),
                namespace=self.namespace,
                run=run,
                durable_replicas=self.durable_replicas,
                durable_timeout_ms=self.durable_timeout_ms,
            )
            self._run_ledgers[run] = ledger
            if len(self._run_ledgers) > RUN_LEDGER_CACHE:
                self._run_ledgers.popitem(last=False)
        else:
            self._run_ledgers.move_to_end(run)
        return ledger

    def _scopes(self, run: RunBudget | None) -> list[tuple[BudgetLedger, Scope]]:
        scopes: list[tuple[BudgetLedger, Scope]] = []
        if self.ledger is not None and self.agent_scope is not None:
            scopes.append((self.ledger, self.agent_scope))
        if run is not None:
            run_ledger = self.run_ledger(run.run)
            if run_ledger is not None:
                scopes.extend((run_ledger, scope) for scope in run.scopes)
        return scopes

    async def reserve(self, *, tokens: int, usd_nanos: int | None, run: RunBudget | None) -> Charge:
        """Reserve the call's worst case in every scope, scope by scope, or refuse it."""
        charge = Charge(tokens=tokens, usd_nanos=usd_nanos, run=run)
        await self._reserve_attempt(charge)
        return charge

    async def _reserve_attempt(self, charge: Charge) -> None:
        # Scope by scope across ledgers; the scopes of one ledger (a run and its step) at once.
        by_ledger: dict[int, tuple[BudgetLedger, list[Scope]]] = {}
        for ledger, scope in self._scopes(charge.run):
            by_ledger.setdefault(id(ledger), (ledger, []))[1].append(scope)
        for ledger, scopes in by_ledger.values():
            try:
                reservation = await ledger.reserve(
                    scopes, tokens=charge.tokens, usd_nanos=charge.usd_nanos, ttl_seconds=self.ttl
                )
            except Exception as error:  # noqa: BLE001 - every failure releases, then decides
                self._release(charge)
                if isinstance(error, LedgerUnavailable) and error.unconfirmed is not None:
                    # It may have been recorded: release it rather than let it expire into a
                    # charge (a settle of an unknown id leaves a tombstone, so a late reserve
                    # of the same id cannot land afterwards).
                    self._settle_in_background(ledger, error.unconfirmed, 0, 0)
                if self._fail_open(error):
                    charge.held.clear()
                    return
                raise self._refusal(error, charge.run) from None
            charge.held.append((ledger, reservation))

    def _fail_open(self, error: Exception) -> bool:
        if isinstance(error, BudgetExceeded | LimitMismatch | Unpriced):
            return False
        if not isinstance(error, LedgerUnavailable):
            log.error("budget ledger failed unexpectedly", exc_info=error)
        if self.fail_open:
            log.warning("budget ledger unavailable, call let through unmetered: %s", error)
            return True
        return False

    def _refusal(self, error: Exception, run: RunBudget | None) -> Exception:
        who = f"run {run.run}" if run is not None else "the run"
        if isinstance(error, BudgetExceeded):
            message = str(error)
            message = message.replace("of scope agent ", f"of agent {self.agent} ", 1)
            message = message.replace("of scope run ", f"of {who} ", 1)
            if error.never_fits:
                return InvalidRequest(message)
            return RateLimited(
                message,
                reason=f"budget_{error.kind}",
                retry_after=error.retry_after,
                budget_scope="run" if error.scope == RUN_SCOPE else "agent",
            )
        if isinstance(error, LimitMismatch):
            return InvalidRequest(
                f"kubeagents-run-budget: the limit of {who} was fixed by its first call at "
                f"tokens={_limit(error.stored_token_limit)}, "
                f"usd={_usd_limit(error.stored_usd_nanos_limit)}; a later call cannot change it"
            )
        if isinstance(error, Unpriced):
            return NotPriced(
                f"{who} has a dollar limit, and this call has no price (its model or one of "
                "its options is not in the price table)"
            )
        return LedgerDown(f"budget ledger unavailable: {error}")

    def _release(self, charge: Charge) -> None:
        for ledger, reservation in charge.held:
            self._settle_in_background(ledger, reservation, 0, 0)
        charge.held.clear()

    async def retry_after_billed_failure(self, charge: Charge) -> bool:
        """Before retrying an attempt that may have been billed: charge it in full, and reserve
        the next attempt's worst case. False (nothing more held): do not retry."""
        self.settle(charge, tokens=charge.tokens, usd_nanos=charge.usd_nanos or 0)
        if not self.metering:
            return True
        try:
            await self._reserve_attempt(charge)
        except Exception:  # noqa: BLE001 - refused or unavailable: the failed answer stands
            return False
        return True

    def settle(self, charge: Charge, *, tokens: int, usd_nanos: int) -> None:
        """Replace the reservations by the real spend; retried in the background until it
        lands."""
        for ledger, reservation in charge.held:
            self._settle_in_background(ledger, reservation, tokens, usd_nanos)
        charge.held.clear()

    def settle_in_full(self, charge: Charge) -> None:
        self.settle(charge, tokens=charge.tokens, usd_nanos=charge.usd_nanos or 0)

    def _settle_in_background(
        self, ledger: BudgetLedger, reservation: Reservation, tokens: int, usd: int
    ) -> None:
        task = asyncio.get_running_loop().create_task(
            self._settle_until_landed(ledger, reservation, tokens, usd)
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle_until_landed(
        self, ledger: BudgetLedger, reservation: Reservation, tokens: int, usd: int
    ) -> None:
        attempt = 0
        try:
            while True:
                try:
                    async with asyncio.timeout(SETTLE_ATTEMPT_SECONDS):
                        await ledger.settle(reservation, tokens=tokens, usd_nanos=usd)
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
                    await asyncio.sleep(SETTLE_BACKOFF.delay(attempt))
                    attempt += 1
        finally:
            if attempt:
                self.metrics.settlements_pending.dec()

    async def drain(self) -> None:
        """Wait for settlements still in flight (at shutdown; bound it with asyncio.timeout)."""
        if self._pending:
            await asyncio.wait(self._pending)


def _limit(value: int | None) -> str:
    return "none" if value is None else str(value)


def _usd_limit(nanos: int | None) -> str:
    return "none" if nanos is None else f"{Decimal(nanos) / NANOS_PER_USD:f}"
