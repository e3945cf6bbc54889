"""`kubeagents runtime`, registered in the `kubeagents.commands` entry point group."""

from kubeagents.commands import Command
from kubeagents_runtime.settings import RuntimeSettings

COMMAND = Command(
    name="runtime",
    summary="The agent runtime: takes the agent's tasks from its Redis stream and runs the "
    "tool-use loop through the proxy with MCP tools; tasks resume after a crash.",
    settings=RuntimeSettings,
    entry_point="kubeagents_runtime.command:serve_runtime",
)
