"""Check results and the hysteresis that turns them into a passing or failing check.

A check starts *pending* (NotReady) and stays pending, whatever fails, until its first pass,
which makes it pass at once (a pod starts NotReady until its first pass); after that,
`failure_threshold` consecutive failures make it fail, and `success_threshold` consecutive
passes make it pass again. The semantic check's
state travels between pods as JSON (`to_json` / `from_json`) in the shared verdict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class CheckResult:
    """One run of one check."""

    check: str
    passed: bool
    at: float  # unix seconds when it finished
    latency_ms: float
    reason: str = ""  # machine-readable, when failed
    detail: str = ""
    tokens: int = 0  # model tokens it spent (semantic check only)
    excerpt: str = ""  # the start of the model's reply (semantic check only)
    by: str = ""  # the pod that ran it

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckResult:
        return cls(
            check=str(data["check"]),
            passed=bool(data["passed"]),
            at=float(data["at"]),
            latency_ms=float(data["latency_ms"]),
            reason=str(data.get("reason", "")),
            detail=str(data.get("detail", "")),
            tokens=int(data.get("tokens", 0)),
            excerpt=str(data.get("excerpt", "")),
            by=str(data.get("by", "")),
        )


@dataclass(frozen=True)
class Thresholds:
    failure: int
    success: int


@dataclass(frozen=True)
class CheckState:
    """Where one check stands after the results it has seen."""

    passing: bool | None = None  # None: pending, no result yet
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last: CheckResult | None = field(default=None)

    def record(self, result: CheckResult, thresholds: Thresholds) -> CheckState:
        if result.passed:
            successes = self.consecutive_successes + 1
            passing = self.passing
            if passing is None or (not passing and successes >= thresholds.success):
                passing = True
            return CheckState(passing, 0, successes, result)
        failures = self.consecutive_failures + 1
        passing = self.passing  # pending stays pending until the first pass
        if passing and failures >= thresholds.failure:
            passing = False
        return replace(
            self,
            passing=passing,
            consecutive_failures=failures,
            consecutive_successes=0,
            last=result,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "passing": self.passing,
            "consecutive_failures": self.consecutive_failures,
            "consecutive_successes": self.consecutive_successes,
            "last": asdict(self.last) if self.last is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckState:
        last = data.get("last")
        passing = data.get("passing")
        return cls(
            passing=None if passing is None else bool(passing),
            consecutive_failures=int(data.get("consecutive_failures", 0)),
            consecutive_successes=int(data.get("consecutive_successes", 0)),
            last=CheckResult.from_dict(last) if isinstance(last, dict) else None,
        )
