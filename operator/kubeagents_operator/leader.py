"""Leader election over a `coordination.k8s.io/v1` Lease, the way client-go does it.

Of several operator replicas, only the one holding the Lease drives runs; the others wait. The
holder renews the Lease every third of its duration. A candidate takes the Lease over when its
record has not changed for a whole duration, measured on the candidate's own clock since it
last saw the record change (so clocks that disagree between nodes do not matter). A holder that
cannot renew for a whole duration has lost: it stops (the process exits and restarts as a
candidate), because another replica may already have taken over. On a clean stop the holder
releases the Lease, so its successor starts at once instead of after a duration.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import httpx

from kubeagents_operator.errors import LeadershipLost

LOG = logging.getLogger("kubeagents.operator.leader")


def _micro_time() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class _Observed:
    record: tuple[Any, ...]
    at: float  # monotonic time it was first seen


class LeaseElector:
    """Acquire, hold and release one Lease for `identity`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        duration_seconds: float,
    ) -> None:
        self.http = http
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self.collection = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.name = f"{namespace}/{name}"
        self.identity = identity
        self.duration = duration_seconds
        self.retry = duration_seconds / 3
        self._observed: _Observed | None = None
        self._renewed = 0.0

    async def acquire(self) -> None:
        """Return once this replica holds the Lease."""
        waiting_logged = ""
        while True:
            holder = await self._try_acquire()
            if holder == self.identity:
                LOG.info("holding the Lease %s as %s", self.name, self.identity)
                return
            if holder and holder != waiting_logged:
                LOG.info("waiting for the Lease %s, held by %s", self.name, holder)
                waiting_logged = holder
            await asyncio.sleep(self.retry)

    async def hold(self) -> None:
        """Renew the Lease until cancelled; raise `LeadershipLost` when that fails for a whole
        duration or another replica holds it."""
        while True:
            await asyncio.sleep(self.retry)
            try:
                holder = await self._try_acquire()
            except (httpx.HTTPError, OSError) as error:
                LOG.warning("renewing the Lease %s failed: %s", self.name, error)
                holder = self.identity if time.monotonic() - self._renewed < self.duration else ""
                if not holder:
                    raise LeadershipLost(
                        f"the Lease {self.name} was not renewed for {self.duration:g} s"
                    ) from error
                continue
            if not holder:  # a conflicting write: look again next round, within the duration
                if time.monotonic() - self._renewed >= self.duration:
                    raise LeadershipLost(
                        f"the Lease {self.name} was not renewed for {self.duration:g} s"
                    )
                continue
            if holder != self.identity:
                raise LeadershipLost(f"the Lease {self.name} is held by {holder} now")

    async def release(self) -> None:
        """Give the Lease up (on a clean stop), if this replica still holds it."""
        response = await self.http.get(self.path)
        if response.status_code != 200:
            return
        lease = response.json()
        if lease.get("spec", {}).get("holderIdentity") != self.identity:
            return
        lease["spec"].update({"holderIdentity": None, "leaseDurationSeconds": 1})
        await self.http.put(self.path, json=lease)

    async def _try_acquire(self) -> str:
        """One round of client-go's tryAcquireOrRenew; the holder afterwards."""
        seconds = max(1, math.ceil(self.duration))
        response = await self.http.get(self.path)
        if response.status_code == 404:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.path.rsplit("/", 1)[1]},
                "spec": self._spec(seconds, transitions=0, acquired=_micro_time()),
            }
            created = await self.http.post(self.collection, json=body)
            if created.status_code == 409:
                return ""  # another replica created it first: look again next round
            created.raise_for_status()
            self._renewed = time.monotonic()
            return self.identity
        response.raise_for_status()
        lease = response.json()
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        now = time.monotonic()
        if self._observed is None or self._observed.record != record:
            self._observed = _Observed(record, now)
        expired = now - self._observed.at >= float(spec.get("leaseDurationSeconds") or seconds)
        if holder and holder != self.identity and not expired:
            return str(holder)
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            acquired = spec.get("acquireTime") or _micro_time()
        else:
            transitions += 1
            acquired = _micro_time()
        lease["spec"] = self._spec(seconds, transitions=transitions, acquired=acquired)
        updated = await self.http.put(self.path, json=lease)  # carries resourceVersion
        if updated.status_code == 409:
            return ""  # changed meanwhile: look again next round
        updated.raise_for_status()
        self._renewed = time.monotonic()
        return self.identity

    def _spec(self, seconds: int, *, transitions: int, acquired: str) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": seconds,
            "acquireTime": acquired,
            "renewTime": _micro_time(),
            "leaseTransitions": transitions,
        }
