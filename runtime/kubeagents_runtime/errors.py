"""The runtime's errors, in one place.

- `TaskFailure` and its kinds: an attempt at a task failed. `Retryable` attempts are retried
  with backoff (or after `retry_after`, when the proxy said so) until `max_attempts`;
  `Permanent` ones fail the task at once; `RunCancelled` is the team run being cancelled.
  `kubeagents_runtime.failures.classify` turns what the proxy answered into one of them.
- `http_problem`: how the task API answers the errors its handlers meet (the error middleware,
  `kubeagents.http_errors`, calls it).
"""

from __future__ import annotations

from redis.exceptions import RedisError

from kubeagents.errors import HttpProblem, InvalidTask


class TaskFailure(Exception):
    """An attempt failed; `message` is what the result's `error` field says."""

    retryable = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class Retryable(TaskFailure):
    retryable = True


class Permanent(TaskFailure):
    retryable = False


class RunCancelled(Permanent):
    def __init__(self) -> None:
        super().__init__("run cancelled")


def http_problem(error: Exception) -> HttpProblem | None:
    """The task API's answer to an error its handlers raised (None: an unexpected one)."""
    if isinstance(error, InvalidTask):
        return HttpProblem(400, str(error))
    if isinstance(error, RedisError | OSError):
        return HttpProblem(503, f"the task queue is unavailable: {error}")
    return None
