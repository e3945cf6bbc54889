"""`kubeagents fake-anthropic`, registered in the `kubeagents.commands` entry point group."""

from kubeagents.commands import Command
from kubeagents.fake_anthropic.settings import FakeAnthropicSettings

COMMAND = Command(
    name="fake-anthropic",
    summary="Serve a faithful fake of the Anthropic Messages API on loopback "
    "(local mode, tests and benchmarks).",
    settings=FakeAnthropicSettings,
    entry_point="kubeagents.fake_anthropic.command:serve_fake_anthropic",
)
