"""The operator's errors, in one place.

- `TemplateError`: a step's prompt template cannot be parsed or rendered (the message names the
  problem); the AgentTeam is rejected, or the step fails, with it;
- `OutputInvalid`: a step's output has no JSON, or its JSON does not match the step's
  `outputSchema`; the step fails with it;
- `LeadershipLost`: the Lease could not be renewed, or another replica holds it; the process
  exits so that a standby takes over.

The operator's own HTTP endpoints (`/livez`, `/readyz`, `/metrics`) raise nothing of their own;
an unexpected error is a 500 from the error middleware (`kubeagents.http_errors`).
"""

from __future__ import annotations


class TemplateError(ValueError):
    """A template that cannot be parsed or rendered; the message names the problem."""


class OutputInvalid(ValueError):
    """The output has no JSON, or its JSON does not match the schema; the message says why."""


class LeadershipLost(RuntimeError):
    """The Lease could not be renewed, or another replica holds it now."""
