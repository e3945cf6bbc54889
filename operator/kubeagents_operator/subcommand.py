"""`kubeagents operator`, registered in the `kubeagents.commands` entry point group."""

from kubeagents.commands import Command
from kubeagents_operator.settings import OperatorSettings

COMMAND = Command(
    name="operator",
    summary="The team-run operator: drives AgentRuns of AgentTeams over the agents' task "
    "queues (kopf).",
    settings=OperatorSettings,
    entry_point="kubeagents_operator.command:serve_operator",
)
