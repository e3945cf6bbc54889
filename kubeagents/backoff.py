"""The one backoff policy of every retry loop: exponential, capped, with "equal jitter".

Attempt 0 waits `base`, each later attempt twice the one before, never more than `cap`. With
jitter (the default), the wait is drawn uniformly from its upper half, [d/2, d], so replicas
that failed together do not retry together, while a retry never comes sooner than half the
schedule. The loops that use it: the proxy's upstream retries and its settlement retries, the
runtime's task retries and its MCP reconnects.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Seconds to wait before retry number `attempt` (0 for the first retry)."""

    base: float
    cap: float
    jitter: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.base <= self.cap:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={self.base} cap={self.cap}")

    def delay(self, attempt: int, random_fraction: Callable[[], float] = random.random) -> float:
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        # Past 2**64 the cap holds anyway; the exponent is bounded so the float never overflows.
        nominal = min(self.cap, self.base * 2.0 ** min(attempt, 64))
        if not self.jitter:
            return nominal
        return nominal * (0.5 + random_fraction() / 2)
