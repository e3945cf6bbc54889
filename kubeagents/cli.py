"""The `kubeagents` command: one entry point, one subcommand per process the chart runs.

The subcommands are not listed here: each package registers its own through the
`kubeagents.commands` entry point group (see `kubeagents.commands`), so the core imports no process.
Every subcommand is backed by a pydantic-settings class. Its fields are the process's whole
configuration: each can be set by environment variable (the contract the Helm chart uses) or by
a command-line flag of the same name (handy on a laptop). Flags win over the environment.
Only subcommands whose capability exists are registered; there are no stubs.

A command's name has one word (`kubeagents proxy`) or two (`kubeagents task submit`): two-word
commands sharing their first word are the subcommands of that group, whose one-line summary is
in `kubeagents.commands.COMMAND_GROUPS`. A field marked
`Field(..., json_schema_extra={"positional": True})` is a positional argument instead of a
`--flag` (optional on the command line, so its environment variable still works; a missing
required one is an invalid configuration like any other).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python
from pydantic_settings import BaseSettings

from kubeagents import __version__
from kubeagents.commands import COMMAND_GROUPS, Command, discover

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
    for command in discover():
        *group, leaf = command.name.split()
        siblings = subcommands
        for name in group:  # `discover` checked that a group is one word of COMMAND_GROUPS
            if name not in groups:
                summary = COMMAND_GROUPS[name]
                group_parser = subcommands.add_parser(name, help=summary, description=summary)
                groups[name] = group_parser.add_subparsers(dest="subcommand", required=True)
            siblings = groups[name]
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
