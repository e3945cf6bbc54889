"""The `kubeagents` command: one entry point, one subcommand per process the chart runs.

Every subcommand is backed by a pydantic-settings class. Its fields are the process's whole
configuration: each can be set by environment variable (the contract the Helm chart uses) or by
a command-line flag of the same name (handy on a laptop). Flags win over the environment.
Only subcommands whose capability exists are registered here; there are no stubs.

A command's name has one word (`kubeagents proxy`) or two (`kubeagents task submit`): two-word
commands sharing their first word are the subcommands of that group, whose one-line summary is in
`COMMAND_GROUPS`. A field marked `Field(..., json_schema_extra={"positional": True})` is a
positional argument instead of a `--flag` (optional on the command line, so its environment
variable still works; a missing required one is an invalid configuration like any other).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python
from pydantic_settings import BaseSettings

from kubeagents import __version__
from kubeagents.fake_anthropic.settings import FakeAnthropicSettings
from kubeagents.task_command import TaskGetSettings, TaskSubmitSettings, TaskWatchSettings
from kubeagents_operator.settings import OperatorSettings
from kubeagents_probe.settings import ProbeSettings
from kubeagents_proxy.settings import ProxySettings
from kubeagents_runtime.settings import RuntimeSettings


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, a one-line summary, its settings class and its entry point.

    `entry_point` is `"module:function"`, imported only when the subcommand runs, so a process
    loads only its own code (start-up time and idle memory of the sidecars).
    """

    name: str
    summary: str
    settings: type[BaseSettings]
    entry_point: str

    def run(self, settings: BaseSettings) -> int:
        module, _, function = self.entry_point.partition(":")
        serve: Callable[[Any], int] = getattr(importlib.import_module(module), function)
        return serve(settings)


COMMANDS: tuple[Command, ...] = (
    Command(
        name="proxy",
        summary="The LLM proxy sidecar: the only holder of the API key; per-call caps, "
        "concurrency caps, timeouts and rolling 24h token and dollar budgets.",
        settings=ProxySettings,
        entry_point="kubeagents_proxy.command:serve_proxy",
    ),
    Command(
        name="probe",
        summary="The semantic-probe sidecar: asks the model a validator question through the "
        "proxy (once per interval per agent) and checks the path; answers /readyz.",
        settings=ProbeSettings,
        entry_point="kubeagents_probe.command:serve_probe",
    ),
    Command(
        name="runtime",
        summary="The agent runtime: takes the agent's tasks from its Redis stream and runs the "
        "tool-use loop through the proxy with MCP tools; tasks resume after a crash.",
        settings=RuntimeSettings,
        entry_point="kubeagents_runtime.command:serve_runtime",
    ),
    Command(
        name="operator",
        summary="The team-run operator: drives AgentRuns of AgentTeams over the agents' task "
        "queues (kopf).",
        settings=OperatorSettings,
        entry_point="kubeagents_operator.command:serve_operator",
    ),
    Command(
        name="fake-anthropic",
        summary="Serve a faithful fake of the Anthropic Messages API on loopback "
        "(local mode, tests and benchmarks).",
        settings=FakeAnthropicSettings,
        entry_point="kubeagents.fake_anthropic.command:serve_fake_anthropic",
    ),
    Command(
        name="task submit",
        summary="Put a task on an agent's queue in Redis and print its id; with --wait, wait "
        "for its result too.",
        settings=TaskSubmitSettings,
        entry_point="kubeagents.task_command:submit",
    ),
    Command(
        name="task get",
        summary="Print a task's status and result.",
        settings=TaskGetSettings,
        entry_point="kubeagents.task_command:get",
    ),
    Command(
        name="task watch",
        summary="Print a task's status each time it changes, until it is final.",
        settings=TaskWatchSettings,
        entry_point="kubeagents.task_command:watch",
    ),
)

COMMAND_GROUPS: dict[str, str] = {
    "task": "Submit tasks to an agent's queue (in Redis) and follow their status and results.",
}

_COMMAND = "_kubeagents_command"  # where the parser leaves the chosen Command (no field's name)


def _env_name(settings: type[BaseSettings], field: str) -> str:
    prefix = str(settings.model_config.get("env_prefix", ""))
    return f"{prefix}{field}".upper()


def is_positional(field: FieldInfo) -> bool:
    """Whether the field is a positional argument (`json_schema_extra={"positional": True}`)."""
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get("positional") is True


def _add_settings_arguments(parser: argparse.ArgumentParser, settings: type[BaseSettings]) -> None:
    for name, field in settings.model_fields.items():
        if field.is_required():
            shown_default = "required"
        else:
            default = field.get_default(call_default_factory=True)
            shown = default if isinstance(default, str) else to_jsonable_python(default)
            shown_default = f"default {shown if isinstance(shown, str) else json.dumps(shown)}"
        help_text = f"{field.description or ''} [env {_env_name(settings, name)}; {shown_default}]"
        if is_positional(field):
            parser.add_argument(name, nargs="?", default=None, metavar=name.upper(), help=help_text)
        else:
            parser.add_argument(
                f"--{name.replace('_', '-')}",
                dest=name,
                default=None,
                metavar=name.upper(),
                help=help_text,
            )


def _settings_from_args(settings: type[BaseSettings], args: argparse.Namespace) -> BaseSettings:
    overrides: dict[str, Any] = {}
    for name, field in settings.model_fields.items():
        raw = getattr(args, name)
        if raw is None:
            continue
        annotation = str(field.annotation)
        structured = any(kind in annotation for kind in ("list", "dict", "tuple", "set"))
        overrides[name] = json.loads(raw) if structured else raw
    return settings(**overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubeagents",
        description="Run AI agents on Kubernetes with limits you cannot delete. Each subcommand "
        "is one process; every option can also be set by the environment variable shown.",
    )
    parser.add_argument("--version", action="version", version=f"kubeagents {__version__}")
    subcommands = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for command in COMMANDS:
        *group, leaf = command.name.split()
        if not group:
            siblings = subcommands
        elif len(group) == 1 and group[0] in COMMAND_GROUPS:
            if group[0] not in groups:
                summary = COMMAND_GROUPS[group[0]]
                group_parser = subcommands.add_parser(group[0], help=summary, description=summary)
                groups[group[0]] = group_parser.add_subparsers(dest="subcommand", required=True)
            siblings = groups[group[0]]
        else:
            raise ValueError(
                f"command {command.name!r}: a name is one word, or a group of COMMAND_GROUPS "
                "and one word"
            )
        sub = siblings.add_parser(leaf, help=command.summary, description=command.summary)
        sub.set_defaults(**{_COMMAND: command})
        _add_settings_arguments(sub, command.settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, build the subcommand's settings and run it."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command = getattr(args, _COMMAND)
    try:
        settings = _settings_from_args(command.settings, args)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"]
            for e in error.errors()
        )
        parser.exit(2, f"kubeagents {command.name}: invalid configuration: {problems}\n")
    return command.run(settings)


if __name__ == "__main__":
    sys.exit(main())
