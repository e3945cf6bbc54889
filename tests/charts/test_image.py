"""The kubeagents image (Dockerfile at the repository root) and the commands the charts run in it.

No container engine runs here, so the image is tested by what can be tested: the Dockerfile's
structure (stages, pinned versions, flags, user), the builder stage's install steps run for real
with the pinned uv into a fresh environment (from only the files the Dockerfile copies), and
every container command of every chart (`kubeagents …`) run with `--help` from that environment.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.binaries import REPO

DOCKERFILE = REPO / "Dockerfile"
CHARTS = REPO / "charts"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
TOOLS = tomllib.loads((REPO / "tests" / "tools.toml").read_text())
BUILD_TOOLS = {
    "build-essential",
    "gcc",
    "g++",
    "clang",
    "make",
    "cmake",
    "cargo",
    "rustc",
    "build-base",
}
PROCESSES_OF_THE_AGENT_CHART = {"proxy", "probe", "runtime"}

Obj = dict[str, Any]


# --- a small Dockerfile reader ---------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    value: str

    def exec_form(self) -> list[str]:
        parsed = json.loads(self.value)
        assert isinstance(parsed, list), f"{self.keyword} is not in exec form: {self.value}"
        return [str(item) for item in parsed]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.value for i in self.instructions if i.keyword == keyword]

    def args(self) -> dict[str, str]:
        """`ARG NAME=default` of this stage."""
        found = {}
        for value in self.all("ARG"):
            name, _, default = value.partition("=")
            found[name] = default
        return found

    def env(self) -> dict[str, str]:
        """`ENV NAME=value …` of this stage (the key=value form only)."""
        found = {}
        for value in self.all("ENV"):
            for pair in shlex.split(value):
                name, sep, text = pair.partition("=")
                assert sep, f"ENV {value}: use the NAME=value form"
                found[name] = text
        return found


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def resolve(self, text: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: self.global_args.get(m.group(1), m.group(0)), text)


def parse_dockerfile(path: Path) -> Dockerfile:
    """Instructions with their continuation lines joined; comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "the Dockerfile ends inside a continued instruction"

    dockerfile = Dockerfile({}, [])
    for line in logical:
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "FROM":
            words = value.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            dockerfile.stages.append(Stage(words[0], name))
        elif not dockerfile.stages:
            assert keyword == "ARG", f"only ARG may come before the first FROM, not {keyword}"
            name, _, default = value.partition("=")
            dockerfile.global_args[name] = default
        else:
            dockerfile.stages[-1].instructions.append(Instruction(keyword, value))
    return dockerfile


def uv_sync_commands(stage: Stage) -> list[list[str]]:
    """Every `uv sync …` command in the stage's RUN instructions, as an argument list."""
    commands = []
    for run in stage.all("RUN"):
        words = [w for w in shlex.split(run) if not w.startswith("--mount=")]
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", ";"):
                if command[:2] == ["uv", "sync"]:
                    commands.append(command)
                command = []
            else:
                command.append(word)
    return commands


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE)


def builder_and_final(dockerfile: Dockerfile) -> tuple[Stage, Stage]:
    assert len(dockerfile.stages) == 2, [s.base for s in dockerfile.stages]
    builder, final = dockerfile.stages
    assert builder.name == "builder"
    return builder, final


# --- (a) the Dockerfile's structure ----------------------------------------------------------


def test_two_stages_on_the_same_pinned_slim_python(dockerfile: Dockerfile) -> None:
    builder, final = builder_and_final(dockerfile)
    base = dockerfile.resolve(builder.base)
    assert dockerfile.resolve(final.base) == base  # the venv's python links into the base
    match = re.fullmatch(r"python:(3\.\d+)\.\d+-slim-(bookworm|trixie)", base)
    assert match, f"{base}: pin a patch release of a slim Python image"
    minimum = PROJECT["project"]["requires-python"].removeprefix(">=")
    assert tuple(map(int, match.group(1).split("."))) >= tuple(map(int, minimum.split(".")))


def test_the_builder_installs_the_locked_dependencies_with_the_pinned_uv(
    dockerfile: Dockerfile,
) -> None:
    builder, _ = builder_and_final(dockerfile)
    assert builder.args()["UV_VERSION"] == TOOLS["uv"]
    installs = [run for run in builder.all("RUN") if "pip install" in run]
    assert len(installs) == 1
    assert '"uv==${UV_VERSION}"' in installs[0] or "uv==${UV_VERSION}" in installs[0].split()

    syncs = uv_sync_commands(builder)
    assert syncs, "the builder runs no `uv sync`"
    for sync in syncs:
        assert "--locked" in sync  # exactly uv.lock, or fail
        assert "--no-dev" in sync
        assert "--no-editable" in sync  # the project as a wheel: /src is not needed at run time
    assert "--no-install-project" not in syncs[-1]  # the last one installs the project
    assert builder.env()["UV_PYTHON_DOWNLOADS"] == "never"  # the base image's interpreter


def test_the_builder_copies_every_package_of_the_distribution(dockerfile: Dockerfile) -> None:
    builder, _ = builder_and_final(dockerfile)
    copied = {
        Path(source).parts[0]
        for value in builder.all("COPY")
        if not value.startswith("--from")
        for source in value.split()[:-1]
    }
    assert {"pyproject.toml", "uv.lock", PROJECT["project"]["readme"]} <= copied
    packages = PROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    missing = sorted({Path(p).parts[0] for p in packages} - copied)
    assert missing == [], (
        f"add `COPY {missing[0]} ./{missing[0]}` to the builder" if missing else ""
    )


def test_the_final_stage_has_no_build_tools_and_runs_as_a_numeric_non_root_user(
    dockerfile: Dockerfile,
) -> None:
    builder, final = builder_and_final(dockerfile)
    (user,) = final.all("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), f"USER {user}: numeric, so runAsNonRoot can be checked"
    assert int(uid) != 0
    assert not gid or gid.isdigit()

    for run in final.all("RUN"):
        assert "uv " not in run
        assert "pip install" not in run
        if re.search(r"apt-get install|apk add", run):
            packages = set(shlex.split(run))
            tools = sorted(packages & BUILD_TOOLS) + [p for p in packages if p.endswith("-dev")]
            assert tools == [], f"build tools in the final image: {tools}"
    # Only the virtual environment comes over from the builder.
    venv = builder.env()["UV_PROJECT_ENVIRONMENT"]
    assert final.all("COPY") == [f"--from=builder {venv} {venv}"]

    env = final.env()
    assert env["PATH"].split(":")[0] == f"{venv}/bin"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    (entrypoint,) = final.all("ENTRYPOINT")
    assert json.loads(entrypoint) == ["kubeagents"]


def test_the_image_carries_oci_labels_with_the_project_version(dockerfile: Dockerfile) -> None:
    _, final = builder_and_final(dockerfile)
    labels = {}
    for value in final.all("LABEL"):
        for pair in shlex.split(value):
            key, _, text = pair.partition("=")
            labels[key] = text
    for key in ("title", "description", "version", "revision", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.licenses"] == PROJECT["project"]["license"]
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert final.args()["VERSION"] == PROJECT["project"]["version"]


def test_dockerignore_keeps_the_context_small_without_hiding_what_the_build_copies(
    dockerfile: Dockerfile,
) -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for excluded in (".git", ".venv", ".tools", "tests", "**/__pycache__", ".mypy_cache"):
        assert excluded in patterns
    builder, _ = builder_and_final(dockerfile)
    sources = [s for v in builder.all("COPY") for s in v.split()[:-1] if not s.startswith("--")]
    for source in sources:
        hidden = [p for p in patterns if fnmatch.fnmatch(source, p.removeprefix("**/"))]
        assert hidden == [], f"{source} is copied but .dockerignore excludes it ({hidden})"


# --- the builder's install steps, run for real -----------------------------------------------


def bootstrap_uv() -> Path:
    """The uv `make venv` bootstraps (the Makefile's $(CACHE)/bootstrap/uv-<version>)."""
    cache = Path(os.environ.get("KUBEAGENTS_CACHE", Path.home() / ".cache" / "kubeagents"))
    uv = cache / "bootstrap" / f"uv-{TOOLS['uv']}" / "bin" / "uv"
    if not uv.exists():
        pytest.fail(f"uv {TOOLS['uv']} not found at {uv}: run `make venv`", pytrace=False)
    return uv


@pytest.fixture(scope="module")
def image_venv(dockerfile: Dockerfile, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The builder stage's environment: the files its COPY instructions name, in a fresh folder,
    and its `uv sync` commands run with its ENV (the environment path moved into tmp)."""
    builder, _ = builder_and_final(dockerfile)
    context = tmp_path_factory.mktemp("image-src")
    for value in builder.all("COPY"):
        *sources, _ = value.split()
        for source in sources:
            origin = REPO / source
            if origin.is_dir():
                shutil.copytree(
                    origin, context / source, ignore=shutil.ignore_patterns("__pycache__")
                )
            else:
                shutil.copy2(origin, context / source)
    venv = tmp_path_factory.mktemp("image") / "venv"
    cache = Path(os.environ.get("KUBEAGENTS_CACHE", Path.home() / ".cache" / "kubeagents"))
    env = {
        **os.environ,
        **builder.env(),
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_CACHE_DIR": str(cache / "uv"),
    }
    env.pop("VIRTUAL_ENV", None)
    uv = bootstrap_uv()
    for command in uv_sync_commands(builder):
        result = subprocess.run(
            [str(uv), *command[1:]], cwd=context, env=env, capture_output=True, text=True,
            timeout=600, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"{shlex.join(command)}:\n{result.stderr}"
    return venv


def test_the_builder_steps_install_a_working_kubeagents_without_dev_tools(
    image_venv: Path, dockerfile: Dockerfile
) -> None:
    _, final = builder_and_final(dockerfile)
    entrypoint = final.all("ENTRYPOINT")[0]
    (cmd,) = final.all("CMD")
    argv = [str(image_venv / "bin" / json.loads(entrypoint)[0]), *json.loads(cmd)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: kubeagents")
    for dev_tool in ("pytest", "ruff", "mypy"):
        assert not (image_venv / "bin" / dev_tool).exists(), f"{dev_tool} is in the image"
    # Installed as a wheel (--no-editable): the packages themselves are in site-packages.
    site = next((image_venv / "lib").glob("python3*/site-packages"))
    packages = PROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    for package in packages:
        assert (site / Path(package).name / "__init__.py").is_file(), package


# --- (b) every container command of the charts, run with --help ------------------------------


def chart_dirs() -> list[Path]:
    return sorted(path.parent for path in CHARTS.glob("*/Chart.yaml"))


def render_chart(helm: Path, chart: Path, values: Path | None) -> list[Obj]:
    args = ["-f", str(values)] if values else []
    result = subprocess.run(
        [
            str(helm), "template", "release", str(chart), "--namespace", "agents",
            "--api-versions", "monitoring.coreos.com/v1", *args,
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    where = f"{chart.name} with {values.name if values else 'its defaults'}"
    assert result.returncode == 0, f"helm template {where}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if isinstance(doc, dict)]


def pod_containers(node: object) -> Iterator[Obj]:
    """Every container and init container of every pod spec in an object (Deployments, Jobs,
    CronJobs, custom resources with pod templates…)."""
    if isinstance(node, dict):
        for key in ("containers", "initContainers"):
            if isinstance(node.get(key), list):
                yield from (c for c in node[key] if isinstance(c, dict) and "image" in c)
        for value in node.values():
            yield from pod_containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from pod_containers(item)


def is_kubeagents_image(image: str) -> bool:
    repository = image.split("@")[0]
    if ":" in repository.rsplit("/", 1)[-1]:
        repository = repository.rsplit(":", 1)[0]
    return repository.rsplit("/", 1)[-1] == "kubeagents"


@dataclass(frozen=True)
class ChartCommand:
    subcommand: tuple[str, ...]
    where: str


def chart_commands(helm: Path, entrypoint: list[str]) -> dict[str, list[ChartCommand]]:
    """Per chart, the `kubeagents …` subcommand path of every container command, over every ci
    case. A container of the kubeagents image without a command runs the ENTRYPOINT + args."""
    found: dict[str, list[ChartCommand]] = {}
    for chart in chart_dirs():
        cases: list[Path | None] = [*sorted((chart / "ci").glob("*-values.yaml"))] or [None]
        commands = found.setdefault(chart.name, [])
        for values in cases:
            for obj in render_chart(helm, chart, values):
                for container in pod_containers(obj):
                    argv = [str(word) for word in container.get("command") or []]
                    args = [str(word) for word in container.get("args") or []]
                    project_image = is_kubeagents_image(str(container["image"]))
                    argv = argv + args if argv else (entrypoint + args if project_image else [])
                    where = (
                        f"{chart.name} ({values.name if values else 'defaults'}): "
                        f"{obj['kind']}/{obj['metadata']['name']} container {container['name']}"
                    )
                    if not argv or Path(argv[0]).name != "kubeagents":
                        assert not project_image, f"{where} runs {argv}, not a kubeagents command"
                        continue
                    path = []
                    for word in argv[1:]:
                        if word.startswith("-"):
                            break
                        path.append(word)
                    commands.append(ChartCommand(tuple(path), where))
    return found


def test_every_container_command_of_the_charts_runs_from_the_installed_package(
    helm: Path, image_venv: Path, dockerfile: Dockerfile
) -> None:
    _, final = builder_and_final(dockerfile)
    entrypoint = json.loads(final.all("ENTRYPOINT")[0])
    commands = chart_commands(helm, entrypoint)
    assert "kubeagents" in commands  # the platform chart was rendered
    if "agent" in commands:
        subcommands = {c.subcommand[0] for c in commands["agent"] if c.subcommand}
        assert subcommands >= PROCESSES_OF_THE_AGENT_CHART, subcommands

    unique = {c.subcommand: c.where for chart in commands.values() for c in chart}
    for subcommand, where in sorted(unique.items()):
        argv = [str(image_venv / "bin" / "kubeagents"), *subcommand, "--help"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, f"{where}: {shlex.join(argv)}: {result.stderr}"
        usage = " ".join(result.stdout.split())  # argparse wraps long usage lines
        assert usage.startswith(f"usage: {shlex.join(['kubeagents', *subcommand])} "), (
            f"{where}: {result.stdout[:200]}"
        )


def test_the_platform_charts_other_images_are_pinned_by_tag(helm: Path) -> None:
    chart = CHARTS / "kubeagents"
    images = {
        str(container["image"])
        for values in sorted((chart / "ci").glob("*-values.yaml"))
        for obj in render_chart(helm, chart, values)
        for container in pod_containers(obj)
    }
    others = sorted(image for image in images if not is_kubeagents_image(image))
    assert others, "the platform chart runs Redis"
    for image in others:
        if "@sha256:" in image:
            continue
        name, _, tag = image.rpartition(":")
        assert name, f"{image} has no tag"
        assert "/" not in tag, f"{image} has no tag"
        assert tag != "latest", f"{image} is not pinned"
