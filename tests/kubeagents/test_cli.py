"""The `kubeagents` command lists only working subcommands and explains every option."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest

from harness.processes import run_command
from kubeagents import __version__
from kubeagents.cli import is_positional
from kubeagents.commands import (
    COMMAND_GROUPS,
    ENTRY_POINT_GROUP,
    discover,
    load_command,
)
from kubeagents.errors import CommandRegistrationError

pytestmark = pytest.mark.integration  # each test runs `kubeagents` as a process

KUBEAGENTS = Path(sys.executable).parent / "kubeagents"
COMMANDS = discover()


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_command([str(KUBEAGENTS), *args], env=env)


def listed_subcommands(help_text: str) -> set[str]:
    choices = re.search(r"\{([a-z,-]+)\}", help_text)
    assert choices, help_text
    return set(choices.group(1).split(","))


def test_help_lists_exactly_the_registered_subcommands() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert listed_subcommands(result.stdout) == {c.name.split()[0] for c in COMMANDS}
    for command in COMMANDS:
        assert command.name.split()[0] in result.stdout


def test_a_group_help_lists_exactly_its_subcommands() -> None:
    assert set(COMMAND_GROUPS) == {c.name.split()[0] for c in COMMANDS if " " in c.name}
    for group, summary in COMMAND_GROUPS.items():
        result = run(group, "--help")
        assert result.returncode == 0, result.stderr
        assert summary in " ".join(result.stdout.split())  # argparse wraps the description
        members = {c.name.split()[1] for c in COMMANDS if c.name.split()[0] == group}
        assert listed_subcommands(result.stdout) == members


def test_help_lists_no_process_whose_capability_is_not_built() -> None:
    built = {c.name.split()[0] for c in COMMANDS}
    listed = listed_subcommands(run("--help").stdout)
    # Each listed subcommand has a real entry point and settings class (no stubs).
    assert listed <= built
    for command in COMMANDS:
        module, _, function = command.entry_point.partition(":")
        assert callable(getattr(importlib.import_module(module), function))
        assert command.settings.model_fields


def test_each_subcommand_help_names_every_option_with_its_env_var() -> None:
    for command in COMMANDS:
        result = run(*command.name.split(), "--help")
        assert result.returncode == 0, result.stderr
        prefix = str(command.settings.model_config["env_prefix"])
        for name, field in command.settings.model_fields.items():
            shown = name.upper() if is_positional(field) else f"--{name.replace('_', '-')}"
            assert shown in result.stdout
            assert f"{prefix}{name}".upper() in result.stdout
            assert field.description, f"{command.name}: {name} has no description"


def test_version_flag_prints_the_package_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"kubeagents {__version__}"


def test_unknown_subcommand_is_rejected() -> None:
    result = run("frobnicate")
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr


def test_invalid_flag_value_names_the_option() -> None:
    result = run("fake-anthropic", "--port", "eighty")
    assert result.returncode == 2
    assert "invalid configuration: port:" in result.stderr


def test_invalid_env_value_names_the_option() -> None:
    result = run("fake-anthropic", env={"KUBEAGENTS_FAKE_ANTHROPIC_PORT": "eighty"})
    assert result.returncode == 2
    assert "invalid configuration: port:" in result.stderr


def test_every_process_registers_its_subcommand_through_the_entry_point_group() -> None:
    registered = {entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)}
    assert {"proxy", "probe", "runtime", "operator", "fake-anthropic"} <= registered
    assert {c.name for c in COMMANDS} == {name.replace(".", " ") for name in registered}


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("probe", "kubeagents_proxy.subcommand:COMMAND", "holds the command 'proxy'"),
        ("proxy", "kubeagents.commands:ENTRY_POINT_GROUP", "a str, not a Command"),
        ("proxy", "kubeagents_nowhere.subcommand:COMMAND", "No module named 'kubeagents_nowhere'"),
    ],
)
def test_a_broken_registration_is_named_with_its_entry_point(
    name: str, value: str, problem: str
) -> None:
    entry = EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)
    with pytest.raises(CommandRegistrationError, match=re.escape(problem)):
        load_command(entry)
