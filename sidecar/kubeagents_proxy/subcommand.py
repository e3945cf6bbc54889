"""`kubeagents proxy`, registered in the `kubeagents.commands` entry point group."""

from kubeagents.commands import Command
from kubeagents_proxy.settings import ProxySettings

COMMAND = Command(
    name="proxy",
    summary="The LLM proxy sidecar: the only holder of the API key; per-call caps, "
    "concurrency caps, timeouts and rolling 24h token and dollar budgets.",
    settings=ProxySettings,
    entry_point="kubeagents_proxy.command:serve_proxy",
)
