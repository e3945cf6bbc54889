"""The core's errors, in one place. Each process package has its own `errors` module too.

- `InvalidTask`: a task that cannot be submitted (the message names the problem);
- `CommandRegistrationError`: an entry point of `kubeagents.commands` is not a usable command;
- `InvalidLogLevel`: `KUBEAGENTS_LOG_LEVEL` names no level;
- `HttpProblem`: what an HTTP handler raises to answer with an error status; the process's
  error middleware (`kubeagents.http_errors`) turns it into the response.
"""

from __future__ import annotations


class InvalidTask(ValueError):
    """A task that cannot be submitted; the message names the problem."""


class CommandRegistrationError(Exception):
    """An entry point of the group is not a usable `Command` (the installed package is broken)."""


class InvalidLogLevel(ValueError):
    """`KUBEAGENTS_LOG_LEVEL` names no level."""


class HttpProblem(Exception):
    """Answer the request with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
