"""The probe's errors, in one place.

- `CheckFailed`: a check failed; its `reason` (machine-readable) and `detail` become the
  check's result in `/readyz` and `/status`. The probe's HTTP endpoints answer from memory and
  raise nothing of their own; an unexpected error is a 500 from the error middleware
  (`kubeagents.http_errors`).
"""

from __future__ import annotations


class CheckFailed(Exception):
    """A check failed; `reason` is machine-readable, `detail` says what happened."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
