"""Build the control-plane programs (and ct) from their Go modules, cached by version.

For each `[go.NAME]` table of tests/tools.toml this writes a tiny build module that requires the
pinned module version, resolves it with `go get`, and builds each binary with `go build`. The
module and build caches and the binaries live in the cache folder outside the repository, keyed
by name and version, so a second run builds nothing. The binaries are then linked into the
tools folder (.tools/bin). The files of each `[crds.NAME]` table (operators' CustomResource-
Definitions, from their modules' source) are linked into .tools/crds/NAME/.

    python tests/harness/go_builds.py --cache DIR --tools DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS_TOML = REPO / "tests" / "tools.toml"
MINIMUM_GO = (1, 25)
RELATIVE_REPLACE = re.compile(r"^\s*(?:replace\s+)?(\S+)\s+=>\s+\.{1,2}/\S+\s*$", re.MULTILINE)


@dataclass(frozen=True)
class GoBuild:
    """One `[go.NAME]` table: a Go module at a version and the binaries built from it."""

    name: str
    module: str
    version: str
    binaries: dict[str, str]
    relative_replaces_version: str | None = None
    config_dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    # `-X` flags: package path -> {variable: value}; `{version}`, `{major}`, `{minor}` expand
    # (Kubernetes reads its version from k8s.io/component-base/version, unset without them).
    version_variables: dict[str, dict[str, str]] = field(default_factory=dict)

    def package(self, subpath: str) -> str:
        return f"{self.module}/{subpath}" if subpath else self.module

    def ldflags(self) -> str:
        major, minor, *_ = self.version.lstrip("v").split(".")
        stamps = [
            f"-X {package}.{name}={value.format(version=self.version, major=major, minor=minor)}"
            for package, variables in sorted(self.version_variables.items())
            for name, value in sorted(variables.items())
        ]
        return " ".join(["-s", "-w", *stamps])

    @property
    def cache_name(self) -> str:
        """The cache folder: the version, plus a digest of the stamps when there are any."""
        if not self.version_variables:
            return f"{self.name}-{self.version}"
        digest = hashlib.sha256(self.ldflags().encode()).hexdigest()[:8]
        return f"{self.name}-{self.version}-{digest}"


def pinned_builds() -> list[GoBuild]:
    with TOOLS_TOML.open("rb") as file:
        tables = tomllib.load(file)["go"]
    return [GoBuild(name=name, **table) for name, table in tables.items()]


@dataclass(frozen=True)
class CrdSource:
    """One `[crds.NAME]` table: CustomResourceDefinition files inside a Go module's source."""

    name: str
    module: str
    version: str
    files: list[str]


def pinned_crds() -> list[CrdSource]:
    with TOOLS_TOML.open("rb") as file:
        tables = tomllib.load(file).get("crds", {})
    return [CrdSource(name=name, **table) for name, table in tables.items()]


def link_crds(crds: CrdSource, toolchain: GoToolchain, cache: Path, crd_dir: Path) -> None:
    """Link the CRD files of `crds` (from the module cache) into `crd_dir`/NAME/."""
    source = Path(toolchain.module_source(crds.module, crds.version, cache)["Dir"])
    for file in crds.files:
        if not (source / file).is_file():
            raise SystemExit(f"{crds.module}@{crds.version} has no {file}")
        link(source / file, crd_dir / crds.name / Path(file).name)


class GoToolchain:
    """`go` with module and build caches in the cache folder; it never downloads a toolchain."""

    def __init__(self, cache: Path, log: Path) -> None:
        go = shutil.which("go")
        if go is None:
            raise SystemExit(
                "go not found on PATH: the control plane is built from Go modules "
                f"(Go >= {'.'.join(map(str, MINIMUM_GO))} needed)."
            )
        self.go = go
        self.log = log
        self.env = {
            **os.environ,
            "GOMODCACHE": str(cache / "go" / "mod"),
            "GOCACHE": str(cache / "go" / "build"),
            "GOTOOLCHAIN": "local",
            "GOFLAGS": "-mod=mod",
            "CGO_ENABLED": "0",
        }
        version = self.run(["env", "GOVERSION"], cwd=cache).strip()
        found = re.match(r"go(\d+)\.(\d+)", version)
        if found is None or (int(found[1]), int(found[2])) < MINIMUM_GO:
            raise SystemExit(f"{version} is too old: Go >= {MINIMUM_GO[0]}.{MINIMUM_GO[1]} needed")

    def run(self, args: list[str], *, cwd: Path) -> str:
        with self.log.open("a") as log:
            log.write(f"$ go {' '.join(args)}  (in {cwd})\n")
        result = subprocess.run(
            [self.go, *args], cwd=cwd, env=self.env, capture_output=True, text=True, check=False
        )
        with self.log.open("a") as log:
            log.write(result.stdout + result.stderr)
        if result.returncode != 0:
            raise SystemExit(f"go {' '.join(args)} failed (log: {self.log}):\n{result.stderr}")
        return result.stdout

    def module_source(self, module: str, version: str, cwd: Path) -> dict[str, str]:
        info: dict[str, str] = json.loads(
            self.run(["mod", "download", "-json", f"{module}@{version}"], cwd=cwd)
        )
        return info


def build_module_text(build: GoBuild, toolchain: GoToolchain, workdir: Path) -> str:
    lines = [f"module kubeagents.build/{build.name}", "", "go 1.25.0", ""]
    lines.append(f"require {build.module} {build.version}")
    if build.relative_replaces_version:
        go_mod = Path(toolchain.module_source(build.module, build.version, workdir)["GoMod"])
        replaced = sorted(set(RELATIVE_REPLACE.findall(go_mod.read_text())))
        if not replaced:
            raise SystemExit(f"{build.module}@{build.version}: no relative replace directives")
        lines += ["", "replace ("]
        lines += [f"\t{path} => {path} {build.relative_replaces_version}" for path in replaced]
        lines.append(")")
    return "\n".join(lines) + "\n"


def ensure_built(build: GoBuild, cache: Path, toolchain: GoToolchain) -> Path:
    """Build the binaries of `build` unless this version is already in the cache; return bin/."""
    root = cache / "go-builds" / build.cache_name
    bin_dir = root / "bin"
    if all((bin_dir / binary).exists() for binary in build.binaries):
        return bin_dir
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"building {', '.join(build.binaries)} from {build.module}@{build.version} "
          "(first run only)", flush=True)  # fmt: skip
    (src / "go.mod").write_text(build_module_text(build, toolchain, src))
    packages = [build.package(sub) for sub in build.binaries.values()]
    toolchain.run(["get", *(f"{package}@{build.version}" for package in packages)], cwd=src)
    partial = root / "bin.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    for binary, sub in build.binaries.items():
        toolchain.run(
            ["build", "-trimpath", f"-ldflags={build.ldflags()}", "-o", str(partial / binary),
             build.package(sub)],
            cwd=src,
        )  # fmt: skip
    shutil.rmtree(bin_dir, ignore_errors=True)
    partial.rename(bin_dir)
    print(f"built {build.name} {build.version} in {time.monotonic() - started:.0f}s", flush=True)
    return bin_dir


def link(target: Path, link_path: Path) -> None:
    link_path.parent.mkdir(parents=True, exist_ok=True)
    if link_path.is_symlink() or link_path.exists():
        if link_path.is_symlink() and link_path.readlink() == target:
            return
        link_path.unlink()
    link_path.symlink_to(target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="cache folder outside the repo")
    parser.add_argument("--tools", type=Path, required=True, help="folder to link binaries into")
    args = parser.parse_args()
    cache: Path = args.cache.resolve()
    (cache / "go-builds").mkdir(parents=True, exist_ok=True)
    toolchain = GoToolchain(cache, cache / "go-builds" / "build.log")
    for build in pinned_builds():
        bin_dir = ensure_built(build, cache, toolchain)
        for binary in build.binaries:
            link(bin_dir / binary, args.tools / binary)
        if build.config_dir:
            source = toolchain.module_source(build.module, build.version, cache)["Dir"]
            link(Path(source) / build.config_dir, args.tools.parent / build.name)
    for crds in pinned_crds():
        link_crds(crds, toolchain, cache, args.tools.parent / "crds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
