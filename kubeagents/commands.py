"""The subcommands of `kubeagents`, found through the `kubeagents.commands` entry point group.

The core does not know the processes: each package (the proxy, the probe, the runtime, the
operator, and the core's own task and fake-API commands) declares its subcommands in
`pyproject.toml`, the way pytest and flake8 find their plugins::

    [project.entry-points."kubeagents.commands"]
    proxy = "kubeagents_proxy.subcommand:COMMAND"
    "task.submit" = "kubeagents.task_command:SUBMIT"

An entry point's name is the command's name with dots for spaces, and its object is a `Command`.
Loading one imports only the module that holds it, with its settings class; the process's own
code (`Command.entry_point`) is imported when that subcommand runs, so a process loads only its
own code (start-up time and idle memory of the sidecars).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pydantic_settings import BaseSettings

from kubeagents.errors import CommandRegistrationError

ENTRY_POINT_GROUP = "kubeagents.commands"

# Two-word commands sharing their first word are the subcommands of that group.
COMMAND_GROUPS: dict[str, str] = {
    "task": "Submit tasks to an agent's queue (in Redis) and follow their status and results.",
}


@dataclass(frozen=True)
class Command:
    """A subcommand: its name, a one-line summary, its settings class and its entry point.

    `entry_point` is `"module:function"`; the function takes the settings and returns the exit
    status.
    """

    name: str
    summary: str
    settings: type[BaseSettings]
    entry_point: str

    def run(self, settings: BaseSettings) -> int:
        module, _, function = self.entry_point.partition(":")
        serve: Callable[[Any], int] = getattr(importlib.import_module(module), function)
        return serve(settings)


def discover() -> tuple[Command, ...]:
    """Every registered subcommand, sorted by name."""
    commands: dict[str, Command] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        command = load_command(entry)
        if command.name in commands:
            raise CommandRegistrationError(
                f"entry point {entry.value}: command {command.name!r} is registered twice"
            )
        commands[command.name] = command
    return tuple(commands[name] for name in sorted(commands))


def load_command(entry: EntryPoint) -> Command:
    """The `Command` an entry point names, or `CommandRegistrationError` saying what is wrong."""
    try:
        command = entry.load()
    except (ImportError, AttributeError) as error:
        raise CommandRegistrationError(f"entry point {entry.value}: {error}") from error
    if not isinstance(command, Command):
        raise CommandRegistrationError(
            f"entry point {entry.value}: a {type(command).__name__}, not a Command"
        )
    if command.name != entry.name.replace(".", " "):
        raise CommandRegistrationError(
            f"entry point {entry.name!r} holds the command {command.name!r}: the entry point's "
            "name is the command's name with dots for spaces"
        )
    *group, _ = command.name.split()
    if len(group) > 1 or (group and group[0] not in COMMAND_GROUPS):
        raise CommandRegistrationError(
            f"command {command.name!r}: a name is one word, or a group of COMMAND_GROUPS and "
            "one word"
        )
    return command
