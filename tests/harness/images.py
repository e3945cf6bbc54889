"""Build the container images a real local Kubernetes node runs, with no image registry at all.

No registry is reachable from the machines the tests run on, so every image is made from what is:
Debian packages (a root filesystem from mmdebstrap), the project's own Dockerfile on a Python
base made from Debian packages, Go modules (tests/tools.toml, built by go_builds.py) and a small
C program. Each image is built with buildah and exported as a docker-archive tar into
`<cache>/images/`, named by a content key: a sha256 over everything that determines the image.
When the archive for the key is there, nothing is rebuilt, so a second run costs a few hashes.
`import_images` loads the archives into a containerd image store (namespace k8s.io, where the
kubelet's CRI looks) and labels each image with its key, so an import is done once per content.

The names are the ones the charts and addons use by default (the kubeagents image under the
charts' repository and appVersion, Valkey under the platform chart's default), so a chart
installs unchanged on the local node.

    cd tests && ../.venv/bin/python -m harness.images build --cache DIR
    cd tests && ../.venv/bin/python -m harness.images import --cache DIR --address SOCKET
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness import go_builds
from harness.processes import HarnessError

REPO = Path(__file__).resolve().parents[2]
# Bumped whenever the way an image is built changes in a way its other inputs do not show.
RECIPE_VERSION = 1
SUITE = "bookworm"
KEY_LABEL = "io.kubeagents.image.key"
# The host's CA bundle: egress may be TLS-intercepted, so downloads inside a build (pip) must
# trust it. It is mounted over the image's own bundle during RUN steps only, never baked in.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOG_TAIL_LINES = 40


def chart_app_version(chart: Path = REPO / "charts" / "agent" / "Chart.yaml") -> str:
    """The `appVersion` of a chart: the tag its default kubeagents image has."""
    found = re.search(r'^appVersion:\s*["\']?([^"\'\s]+)', chart.read_text(), re.MULTILINE)
    if found is None:
        raise HarnessError(f"{chart} has no appVersion")
    return found[1]


APP_VERSION = chart_app_version()
_GO_BUILDS = {build.name: build for build in go_builds.pinned_builds()}
COREDNS_BUILD = _GO_BUILDS["coredns"]
PROVISIONER_BUILD = _GO_BUILDS["local-path-provisioner"]
# bookworm's busybox-static is BusyBox 1.35.0 (checked at build time).
BUSYBOX_VERSION = "1.35.0"

PYTHON_BASE_IMAGE = "localhost/kubeagents/python-base:bookworm"
KUBEAGENTS_IMAGE = f"ghcr.io/kubeagents/kubeagents:{APP_VERSION}"
VALKEY_IMAGE = "docker.io/valkey/valkey:8.0"
PAUSE_IMAGE = "localhost/kubeagents/pause:3.10"
COREDNS_IMAGE = f"localhost/kubeagents/coredns:{COREDNS_BUILD.version}"
PROVISIONER_IMAGE = f"localhost/kubeagents/local-path-provisioner:{PROVISIONER_BUILD.version}"
BUSYBOX_IMAGE = f"localhost/kubeagents/busybox:{BUSYBOX_VERSION}"

# Host commands the builds run, and the Debian package of each.
BUILD_COMMANDS = {
    "buildah": "buildah",
    "mmdebstrap": "mmdebstrap",
    "skopeo": "skopeo",
    "gcc": "gcc",
}


@dataclass(frozen=True)
class BuiltImage:
    """An image in the cache: its reference, its docker-archive tar and its content key."""

    ref: str
    archive: Path
    key: str


# --- content keys ------------------------------------------------------------------------------


def content_key(inputs: object) -> str:
    """The sha256 of `inputs` (JSON-serialisable) in a canonical form."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dockerfile_copy_sources(dockerfile: str) -> list[str]:
    """The build-context paths the Dockerfile's `COPY` instructions take (not `--from` ones)."""
    sources: list[str] = []
    for line in re.sub(r"\\\n", " ", dockerfile).splitlines():
        words = line.split()
        if not words or words[0].upper() != "COPY":
            continue
        args = words[1:]
        if any(arg.startswith("--from") for arg in args):
            continue
        paths = [arg for arg in args if not arg.startswith("--")]
        sources += [path.removeprefix("./") for path in paths[:-1]]
    return sources


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise HarnessError(f"git {' '.join(args)} failed in {repo}: {result.stderr.strip()}")
    return result.stdout


def context_files(repo: Path, sources: Sequence[str]) -> list[str]:
    """The files under `sources` that git knows (tracked, or untracked and not ignored): what the
    build copies from the context (ignored files such as `__pycache__` are .dockerignored too)."""
    listed = git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
                 *sources).split("\0")  # fmt: skip
    return sorted({name for name in listed if name and (repo / name).is_file()})


def source_revision(repo: Path, paths: Sequence[str]) -> str:
    """The last commit that changed `paths`, with `-modified` when the work tree differs."""
    commit = git(repo, "log", "-1", "--format=%H", "--", *paths).strip() or "uncommitted"
    changed = git(repo, "status", "--porcelain", "--", *paths).strip()
    return f"{commit}-modified" if changed else commit


def dockerfile_inputs(repo: Path) -> dict[str, object]:
    """Everything of `repo` that determines the image its Dockerfile builds: the Dockerfile, its
    .dockerignore, the content of every file it copies, and the revision it is labelled with."""
    dockerfile = (repo / "Dockerfile").read_text()
    sources = dockerfile_copy_sources(dockerfile)
    ignore = repo / ".dockerignore"
    return {
        "dockerfile": hashlib.sha256(dockerfile.encode()).hexdigest(),
        "dockerignore": file_digest(ignore) if ignore.exists() else None,
        "files": {name: file_digest(repo / name) for name in context_files(repo, sources)},
        "revision": source_revision(repo, [*sources, "Dockerfile"]),
    }


# --- what an image is made of --------------------------------------------------------------------


@dataclass(frozen=True)
class ImageConfig:
    """The run-time settings of an image (what `buildah config` sets). In label values,
    `{version}` stands for the version found while building (a Debian package's)."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    user: str = ""
    workdir: str = ""
    env: dict[str, str] = field(default_factory=lambda: {"PATH": PATH_ENV})
    labels: dict[str, str] = field(default_factory=dict)

    def buildah_args(self, *, key: str, version: str = "") -> list[str]:
        args: list[str] = []
        for name, value in self.env.items():
            args += ["--env", f"{name}={value}"]
        for name, value in {**self.labels, KEY_LABEL: key}.items():
            args += ["--label", f"{name}={value.format(version=version)}"]
        if self.entrypoint:
            args += ["--entrypoint", json.dumps(self.entrypoint)]
        if self.cmd:
            args += ["--cmd", json.dumps(self.cmd)]
        if self.user:
            args += ["--user", self.user]
        if self.workdir:
            args += ["--workingdir", self.workdir]
        return args


class Recipe(ABC):
    """How one image is made. Its key covers `inputs()`; `build` puts the image into buildah's
    store under `ref`, labelled with the key."""

    name: str  # file names: <name>-<key>.tar, logs/<name>.log
    ref: str
    duration: str  # how long a cold build takes, for the progress line

    @abstractmethod
    def inputs(self) -> dict[str, object]: ...

    @abstractmethod
    def build(self, builder: Builder, key: str) -> None: ...

    def needs(self) -> list[Recipe]:
        """Images that must be in buildah's store before this one builds."""
        return []

    def estimate(self, cache: Path) -> str:
        """How long building it will take, for the progress line."""
        return self.duration

    def key_inputs(self) -> dict[str, object]:
        return {"recipe": RECIPE_VERSION, "ref": self.ref, **self.inputs()}

    def key(self) -> str:
        return content_key(self.key_inputs())


# Keep documentation, manuals and translations out of Debian images (licences stay).
DPKG_SLIM = [
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
]


@dataclass
class DebianImage(Recipe):
    """A root filesystem of Debian packages (mmdebstrap, minbase variant), adjusted by shell hooks
    run on the host with the root filesystem's path as `$1` (`chroot "$1" …` runs inside).
    `version_command` (a hook too) prints the version that labels the image."""

    name: str
    ref: str
    duration: str
    packages: list[str]
    config: ImageConfig
    version_command: str
    hooks: list[str] = field(default_factory=list)
    # Packages taken from `<suite>-backports` (only these: their dependencies come from the suite).
    backports: list[str] = field(default_factory=list)

    def inputs(self) -> dict[str, object]:
        backports = {"backports": sorted(self.backports)} if self.backports else {}
        return {
            "suite": SUITE,
            "packages": sorted(self.packages),
            "dpkg": DPKG_SLIM,
            "hooks": self.hooks,
            "version_command": self.version_command,
            "config": asdict(self.config),
            **backports,
        }

    def build(self, builder: Builder, key: str) -> None:
        work = builder.workdir(self.name)
        rootfs, version_file = work / "rootfs.tar", work / "version"
        hooks = [*self.hooks, f"{self.version_command} > {shlex.quote(str(version_file))}"]
        packages = [*self.packages, *(f"{name}/{SUITE}-backports" for name in self.backports)]
        # The backports line is the suite's own line (same mirror and options), another suite.
        backports_list = f'"$1/etc/apt/sources.list.d/{SUITE}-backports.list"'
        setup = [
            f'cat "$1"/etc/apt/sources.list "$1"/etc/apt/sources.list.d/*.list 2>/dev/null'
            f' | sed -n "s/^\\(deb .* \\){SUITE} /\\1{SUITE}-backports /p" > {backports_list};'
            f" test -s {backports_list}"
        ]
        builder.run(
            ["mmdebstrap", "--variant=minbase", f"--include={','.join(packages)}",
             *(f"--dpkgopt={option}" for option in DPKG_SLIM),
             *(f"--setup-hook={hook}" for hook in setup if self.backports),
             *(f"--customize-hook={hook}" for hook in hooks),
             "--format=tar", SUITE, str(rootfs)],
            self.name,
        )  # fmt: skip
        version = version_file.read_text().strip()
        if not version:
            raise HarnessError(f"{self.ref}: `{self.version_command}` printed no version")
        # `add` unpacks the tar, keeping its owners (valkey's /data).
        builder.commit(self.ref, self.name, [("add", rootfs, "/")],
                       self.config.buildah_args(key=key, version=version))  # fmt: skip
        shutil.rmtree(work)


@dataclass
class DockerfileImage(Recipe):
    """An image built from a repository's Dockerfile on a base image built here."""

    name: str
    ref: str
    duration: str
    repo: Path
    base: Recipe
    version: str

    def inputs(self) -> dict[str, object]:
        return {"base": self.base.key(), "version": self.version, **dockerfile_inputs(self.repo)}

    def needs(self) -> list[Recipe]:
        return [self.base]

    def build(self, builder: Builder, key: str) -> None:
        sources = dockerfile_copy_sources((self.repo / "Dockerfile").read_text())
        revision = source_revision(self.repo, [*sources, "Dockerfile"])
        builder.run(
            ["buildah", "bud", "--isolation", "chroot", "--network", "host", "--layers",
             "--pull=never", "--force-rm", "--volume", f"{CA_BUNDLE}:{CA_BUNDLE}:ro",
             "--build-arg", f"PYTHON_IMAGE={self.base.ref}",
             "--build-arg", f"VERSION={self.version}", "--build-arg", f"REVISION={revision}",
             "--label", f"{KEY_LABEL}={key}",
             "--file", str(self.repo / "Dockerfile"), "--tag", self.ref, str(self.repo)],
            self.name,
        )  # fmt: skip


# The pause program: the first process of every pod sandbox, holding its namespaces. Like
# Kubernetes' own pause, it sleeps until SIGINT or SIGTERM (then exits 0) and reaps children
# re-parented to it (it is PID 1 of a pod that shares its PID namespace).
PAUSE_C = r"""
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signo) {
    (void)signo;
    _exit(0);
}

static void reap(int signo) {
    int saved = errno;
    (void)signo;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

int main(int argc, char **argv) {
    struct sigaction on_stop, on_child;
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("pause " PAUSE_VERSION " (kubeagents, built locally)");
        return 0;
    }
    memset(&on_stop, 0, sizeof on_stop);
    on_stop.sa_handler = stop;
    memset(&on_child, 0, sizeof on_child);
    on_child.sa_handler = reap;
    on_child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    if (sigaction(SIGINT, &on_stop, NULL) < 0 || sigaction(SIGTERM, &on_stop, NULL) < 0 ||
        sigaction(SIGCHLD, &on_child, NULL) < 0) {
        perror("pause: sigaction");
        return 1;
    }
    if (getpid() != 1) {
        fputs("pause: warning: not PID 1, orphans will not be reaped here\n", stderr);
    }
    for (;;) {
        pause();
    }
}
"""
PAUSE_CFLAGS = ["-static", "-O2", "-s", "-Wall", "-Wextra", "-Werror"]


def compile_pause(output: Path, version: str, run: Callable[[Sequence[str]], object]) -> None:
    """Compile the pause program into the static binary `output`; `run` runs gcc."""
    source = output.with_suffix(".c")
    source.write_text(PAUSE_C)
    run(["gcc", *PAUSE_CFLAGS, f'-DPAUSE_VERSION="{version}"', "-o", str(output), str(source)])


def is_static_elf(path: Path) -> bool:
    """True when `path` is an ELF executable with no program interpreter (statically linked)."""
    with path.open("rb") as file:
        header = file.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2:  # 64-bit ELF only
            return False
        order = "<" if header[5] == 1 else ">"
        phoff, = struct.unpack_from(f"{order}Q", header, 0x20)  # fmt: skip
        phentsize, phnum = struct.unpack_from(f"{order}HH", header, 0x36)
        file.seek(phoff)
        table = file.read(phentsize * phnum)
    types = [struct.unpack_from(f"{order}I", table, i * phentsize)[0] for i in range(phnum)]
    return 3 not in types  # PT_INTERP


class BinarySource(ABC):
    """Where the one static binary of a scratch image comes from."""

    @abstractmethod
    def inputs(self) -> dict[str, object]: ...

    @abstractmethod
    def make(self, builder: Builder, work: Path, log_name: str) -> tuple[Path, str]:
        """The binary (made in `work` or found in a cache) and its version."""

    def cached(self, cache: Path) -> bool:
        """Whether the binary is already built in the cache folder."""
        return False


@dataclass
class PauseProgram(BinarySource):
    """The pause program, compiled with the host's gcc."""

    version: str

    def inputs(self) -> dict[str, object]:
        return {"c": PAUSE_C, "cflags": PAUSE_CFLAGS, "version": self.version}

    def make(self, builder: Builder, work: Path, log_name: str) -> tuple[Path, str]:
        compile_pause(work / "pause", self.version, lambda argv: builder.run(argv, log_name))
        return work / "pause", self.version


@dataclass
class GoBinary(BinarySource):
    """A binary of a pinned Go module (a `[go.NAME]` table of tests/tools.toml), built by
    go_builds.py into the cache (CGO_ENABLED=0: static)."""

    build: go_builds.GoBuild
    binary: str

    def inputs(self) -> dict[str, object]:
        return {
            "module": self.build.module,
            "version": self.build.version,
            "package": self.build.binaries[self.binary],
            "ldflags": self.build.ldflags(),
            "env": self.build.env,
        }

    def make(self, builder: Builder, work: Path, log_name: str) -> tuple[Path, str]:
        return builder.go_binary(self.build, self.binary, log_name), self.build.version

    def cached(self, cache: Path) -> bool:
        return (cache / "go-builds" / self.build.cache_name / "bin" / self.binary).exists()


@dataclass
class DebianBinary(BinarySource):
    """A static binary from a Debian package, unpacked (not installed) by mmdebstrap. Its version
    is what `<binary> <version_args>` prints in the group of `version_pattern`."""

    package: str
    path: str  # inside the package
    version_args: list[str]
    version_pattern: str

    def inputs(self) -> dict[str, object]:
        return {"suite": SUITE, "package": self.package, "path": self.path}

    def make(self, builder: Builder, work: Path, log_name: str) -> tuple[Path, str]:
        unpacked = work / "unpacked"
        builder.run(["mmdebstrap", "--variant=extract", f"--include={self.package}",
                     "--format=directory", SUITE, str(unpacked)], log_name)  # fmt: skip
        binary = unpacked / self.path
        banner = subprocess.run([str(binary), *self.version_args], capture_output=True,
                                text=True, check=False)  # fmt: skip
        found = re.search(self.version_pattern, banner.stdout + banner.stderr)
        if found is None:
            raise HarnessError(f"{binary}: no version matching {self.version_pattern!r}")
        return binary, found[1]


@dataclass
class StaticBinaryImage(Recipe):
    """A scratch image holding one static binary at `path`. With `applets`, the binary is a
    busybox: a link to it for each of its applets goes where `busybox --install -s` puts it, and
    the image gets a /tmp. With `tag_is_upstream_version`, the tag must be the upstream part of
    the binary's (Debian) version, checked at build time."""

    name: str
    ref: str
    duration: str
    path: str
    source: BinarySource
    config: ImageConfig
    applets: bool = False
    tag_is_upstream_version: bool = False

    def estimate(self, cache: Path) -> str:
        return "a few seconds" if self.source.cached(cache) else self.duration

    def inputs(self) -> dict[str, object]:
        return {
            "path": self.path,
            "source": {"kind": type(self.source).__name__, **self.source.inputs()},
            "applets": self.applets,
            "config": asdict(self.config),
        }

    def build(self, builder: Builder, key: str) -> None:
        work = builder.workdir(self.name)
        binary, version = self.source.make(builder, work, self.name)
        if not is_static_elf(binary):
            raise HarnessError(f"{binary} is not a static executable: it cannot run from scratch")
        tag = self.ref.rpartition(":")[2]
        if self.tag_is_upstream_version and upstream_version(version) != tag:
            raise HarnessError(f"{self.ref}: {SUITE} now has {version}; change the tag to match")
        rootfs = work / "rootfs"
        target = rootfs / self.path.lstrip("/")
        target.parent.mkdir(parents=True)
        shutil.copy2(binary, target)
        if self.applets:
            make_applet_links(target, rootfs, self.path)
        builder.commit(self.ref, self.name, [("copy", rootfs, "/")],
                       self.config.buildah_args(key=key, version=version))  # fmt: skip
        shutil.rmtree(work)


def upstream_version(debian_version: str) -> str:
    """`1:1.35.0-4+b3` -> `1.35.0`: a Debian version without its epoch and revision."""
    return re.sub(r"^\d+:|-[^-]*$", "", debian_version)


def make_applet_links(busybox: Path, rootfs: Path, path_in_image: str) -> None:
    """Links to the busybox at `path_in_image` for each applet it lists, and a /tmp (1777)."""
    listed = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                            check=True).stdout.split()  # fmt: skip
    for applet in listed:
        link = rootfs / applet
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path_in_image)
    tmp = rootfs / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)


# --- the images --------------------------------------------------------------------------------


def _labels(title: str, description: str, version: str) -> dict[str, str]:
    return {
        "org.opencontainers.image.title": title,
        "org.opencontainers.image.description": description,
        "org.opencontainers.image.version": version,
    }


PYTHON_BASE = DebianImage(
    name="python-base",
    ref=PYTHON_BASE_IMAGE,
    duration="about 1 min",
    packages=["python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates"],
    version_command="chroot \"$1\" dpkg-query --show --showformat='${Version}' python3",
    config=ImageConfig(
        cmd=["python3"],
        # Debian marks its Python as externally managed; the Dockerfile's builder stage installs
        # uv with pip into it, as it does on the official Python image.
        env={"PATH": PATH_ENV, "LANG": "C.UTF-8", "PIP_BREAK_SYSTEM_PACKAGES": "1"},
        labels=_labels(
            "python-base",
            f"Debian {SUITE}'s Python 3 (python3 {{version}}), built "
            "locally as the base of the kubeagents image.",
            "{version}",
        ),
    ),
)

KUBEAGENTS = DockerfileImage(
    name="kubeagents",
    ref=KUBEAGENTS_IMAGE,
    duration="about 1 min",
    repo=REPO,
    base=PYTHON_BASE,
    version=APP_VERSION,
)

# Debian's Valkey 8 (bookworm-backports' valkey-server and valkey-tools) under the platform
# chart's default image name, run like the official image: uid 999, gid 1000 (the chart's
# runAsGroup), data in /data, valkey-server and valkey-cli on PATH, /bin/sh for the chart's command
# and probes; nothing is written outside /data (the chart's root filesystem is read-only).
VALKEY = DebianImage(
    name="valkey",
    ref=VALKEY_IMAGE,
    duration="about 40 s",
    packages=[],
    backports=["valkey-server", "valkey-tools"],
    hooks=[
        'chroot "$1" sh -euc "usermod --uid 999 valkey; groupmod --gid 1000 valkey;'
        " chown -R valkey:valkey /var/lib/valkey /var/log/valkey /etc/valkey;"
        ' install -d -o valkey -g valkey -m 0750 /data"'
    ],
    version_command="chroot \"$1\" dpkg-query --show --showformat='${Version}' valkey-server",
    config=ImageConfig(
        cmd=["valkey-server"],
        user="999:1000",
        workdir="/data",
        labels=_labels(
            "valkey",
            f"Debian {SUITE}-backports' valkey-server and valkey-tools {{version}}, built locally "
            f"(no registry) under the kubeagents platform chart's default image name "
            f"{VALKEY_IMAGE}; not the official Valkey image, the same server (Valkey 8.0).",
            "{version}",
        ),
    ),
)

PAUSE = StaticBinaryImage(
    name="pause",
    ref=PAUSE_IMAGE,
    duration="a few seconds",
    path="/pause",
    source=PauseProgram(version="3.10"),
    config=ImageConfig(
        entrypoint=["/pause"],
        user="65535:65535",
        env={},
        labels=_labels(
            "pause",
            "The pod sandbox's pause process (a static C program built locally, like "
            "Kubernetes' pause).",
            "{version}",
        ),
    ),
)

COREDNS = StaticBinaryImage(
    name="coredns",
    ref=COREDNS_IMAGE,
    duration="about 4 min",
    path="/coredns",
    source=GoBinary(COREDNS_BUILD, "coredns"),
    config=ImageConfig(
        entrypoint=["/coredns"],
        user="65532:65532",
        env={},
        labels=_labels(
            "coredns", f"CoreDNS built locally from {COREDNS_BUILD.module}.", "{version}"
        ),
    ),
)

PROVISIONER = StaticBinaryImage(
    name="local-path-provisioner",
    ref=PROVISIONER_IMAGE,
    duration="about 2 min",
    path="/local-path-provisioner",
    source=GoBinary(PROVISIONER_BUILD, "local-path-provisioner"),
    config=ImageConfig(
        entrypoint=["/local-path-provisioner"],
        user="65532:65532",
        env={},
        labels=_labels(
            "local-path-provisioner",
            f"Rancher's local-path-provisioner built locally from {PROVISIONER_BUILD.module}.",
            "{version}",
        ),
    ),
)

# The provisioner's helper pods run `sh` scripts (mkdir, rm, chmod) as root on the node's
# storage path: Debian's busybox-static with a link for every applet (/bin/sh among them).
BUSYBOX = StaticBinaryImage(
    name="busybox",
    ref=BUSYBOX_IMAGE,
    duration="about 10 s",
    path="/bin/busybox",
    source=DebianBinary(
        package="busybox-static",
        path="bin/busybox",
        version_args=[],
        version_pattern=r"\(Debian ([^)\s]+)\)",  # BusyBox v1.35.0 (Debian 1:1.35.0-4+b3) …
    ),
    applets=True,
    tag_is_upstream_version=True,
    config=ImageConfig(
        cmd=["sh"],
        labels=_labels(
            "busybox", f"Debian {SUITE}'s busybox-static {{version}}, built locally.", "{version}"
        ),
    ),
)

# What a node needs, cheapest first. The Python base is only an intermediate of KUBEAGENTS.
NODE_IMAGES: list[Recipe] = [PAUSE, BUSYBOX, VALKEY, COREDNS, PROVISIONER, KUBEAGENTS]


# --- building ----------------------------------------------------------------------------------


class Builder:
    """Builds recipes into buildah's store and exports them as archives into `<cache>/images`."""

    def __init__(self, cache: Path, progress: Callable[[str], None]) -> None:
        self.cache = cache
        self.dir = cache / "images"
        self.logs = self.dir / "logs"
        self.progress = progress
        self._host_ready = False

    def archive(self, recipe: Recipe, key: str) -> Path:
        return self.dir / f"{recipe.name}-{key[:16]}.tar"

    def ensure(self, recipe: Recipe) -> BuiltImage:
        """The recipe's archive for its current key, built (and exported) when missing."""
        key = recipe.key()
        archive = self.archive(recipe, key)
        if archive.exists():
            self.progress(f"image {recipe.ref}: cached")
            return BuiltImage(recipe.ref, archive, key)
        self.prepare_host()
        for needed in recipe.needs():
            self.ensure_in_store(needed)
        self.progress(f"image {recipe.ref}: building ({recipe.estimate(self.cache)})…")
        started = time.monotonic()
        log = self.log_path(recipe.name)
        log.write_text(f"# {recipe.ref}, key {key}\n")
        # What the key covers, to see why an image was rebuilt.
        inputs = json.dumps(recipe.key_inputs(), indent=1, sort_keys=True)
        log.with_suffix(".inputs.json").write_text(inputs + "\n")
        previous = self.store_id(recipe.ref)
        recipe.build(self, key)
        if previous not in (None, self.store_id(recipe.ref)):
            # The image this build replaced under `ref`: gone unless something still uses it.
            subprocess.run(["buildah", "rmi", previous], capture_output=True, check=False)
        partial = archive.with_name(archive.name + ".partial")
        partial.unlink(missing_ok=True)
        self.run(["skopeo", "copy", "--quiet", f"containers-storage:{recipe.ref}",
                  f"docker-archive:{partial}:{recipe.ref}"], recipe.name)  # fmt: skip
        partial.replace(archive)
        self.remove_older_archives(recipe, archive)
        self.progress(f"image {recipe.ref}: built in {time.monotonic() - started:.0f} s")
        return BuiltImage(recipe.ref, archive, key)

    def ensure_in_store(self, recipe: Recipe) -> None:
        """Have `recipe`'s current image in buildah's store: already there, loaded from its
        archive, or built."""
        key = recipe.key()
        if self.store_key(recipe.ref) == key:
            return
        archive = self.archive(recipe, key)
        if archive.exists():
            self.run(["skopeo", "copy", "--quiet", f"docker-archive:{archive}",
                      f"containers-storage:{recipe.ref}"], recipe.name)  # fmt: skip
        else:
            self.ensure(recipe)

    def store_key(self, ref: str) -> str | None:
        """The content key label of `ref` in buildah's store (None when it is not there)."""
        return self._inspect(ref, f'{{{{index .OCIv1.Config.Labels "{KEY_LABEL}"}}}}')

    def store_id(self, ref: str) -> str | None:
        """The image ID of `ref` in buildah's store (None when it is not there)."""
        return self._inspect(ref, "{{.FromImageID}}")

    def _inspect(self, ref: str, template: str) -> str | None:
        result = subprocess.run(
            ["buildah", "inspect", "--type", "image", "--format", template, ref],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return result.stdout.strip() if result.returncode == 0 else None

    def remove_older_archives(self, recipe: Recipe, keep: Path) -> None:
        pattern = re.compile(rf"{re.escape(recipe.name)}-[0-9a-f]{{16}}\.tar(\.partial)?")
        for path in self.dir.iterdir():
            if path != keep and pattern.fullmatch(path.name):
                path.unlink()

    def log_path(self, name: str) -> Path:
        self.logs.mkdir(parents=True, exist_ok=True)
        return self.logs / f"{name}.log"

    def workdir(self, name: str) -> Path:
        work = self.dir / "work" / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        return work

    def run(self, argv: Sequence[str], name: str) -> None:
        """Run a build command with its output appended to logs/<name>.log; on failure raise
        HarnessError with the log's last lines."""
        log = self.log_path(name)
        with log.open("a") as out:
            out.write(f"$ {shlex.join(argv)}\n")
            out.flush()
            result = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "BUILDAH_ISOLATION": "chroot"}, check=False,
            )  # fmt: skip
        if result.returncode != 0:
            raise HarnessError(
                f"{shlex.join(argv[:2])} failed with status {result.returncode} "
                f"(log: {log}):\n{log_tail(log)}"
            )

    def commit(
        self, ref: str, name: str, files: Sequence[tuple[str, Path, str]], config: list[str]
    ) -> None:
        """Commit a scratch image `ref` from `files` ((`add` to unpack a tar, or `copy`,
        source, destination)) and the `buildah config` arguments `config`."""
        container = subprocess.run(
            ["buildah", "from", "scratch"], capture_output=True, text=True, check=False
        )
        if container.returncode != 0:
            raise HarnessError(f"buildah from scratch failed: {container.stderr.strip()}")
        working = container.stdout.strip()
        try:
            for how, source, destination in files:
                self.run(["buildah", how, working, str(source), destination], name)
            self.run(["buildah", "config", *config, working], name)
            self.run(["buildah", "commit", "--quiet", working, ref], name)
        finally:
            subprocess.run(["buildah", "rm", working], capture_output=True, check=False)

    def go_binary(self, build: go_builds.GoBuild, binary: str, name: str) -> Path:
        """The binary of a pinned Go module, built by go_builds.py into the cache if missing."""
        log = self.log_path(name)
        try:
            toolchain = go_builds.GoToolchain(self.cache, log)
            (self.cache / "go-builds").mkdir(parents=True, exist_ok=True)
            return go_builds.ensure_built(build, self.cache, toolchain) / binary
        except SystemExit as error:  # go_builds reports its failures as SystemExit
            raise HarnessError(f"{build.name}: {error} (log: {log})") from None

    def prepare_host(self) -> None:
        """Install the build commands' Debian packages when one is missing (as root)."""
        if self._host_ready:
            return
        missing = {package for command, package in BUILD_COMMANDS.items()
                   if shutil.which(command) is None}  # fmt: skip
        if not Path(gcc_file("libc.a")).is_absolute():
            missing.add("libc6-dev")  # gcc -static needs libc.a
        if missing:
            install_debian_packages(sorted(missing), why="building the node's images")
        self._host_ready = True


def gcc_file(name: str) -> str:
    """Where gcc finds the library file `name` (just `name` when it has none)."""
    if shutil.which("gcc") is None:
        return name
    result = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True,
                            check=False)  # fmt: skip
    return result.stdout.strip() or name


def install_debian_packages(packages: Sequence[str], *, why: str) -> None:
    """apt-get install `packages` as root; not root: a HarnessError naming them."""
    if os.geteuid() != 0:
        raise HarnessError(
            f"{why} needs the Debian packages {' '.join(packages)}; as root: "
            f"apt-get install {' '.join(packages)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
    ):
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).splitlines()[-LOG_TAIL_LINES:]
            raise HarnessError(f"{shlex.join(argv)} failed:\n" + "\n".join(output))


def log_tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold `directory`/.lock, so concurrent callers (test workers) build each image once."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_images(cache: Path, *, progress: Callable[[str], None] = print) -> list[BuiltImage]:
    """Every image a node needs, as an archive in `<cache>/images/`, building the missing ones."""
    builder = Builder(cache.resolve(), progress)
    with locked(builder.dir):
        return [builder.ensure(recipe) for recipe in NODE_IMAGES]


# --- importing into containerd -----------------------------------------------------------------


def imported_keys(ctr: Path, address: str) -> dict[str, str]:
    """Image reference -> content key label of the images in containerd's k8s.io namespace."""
    return parse_image_list(_ctr(ctr, address, "images", "ls"))


def parse_image_list(listing: str) -> dict[str, str]:
    """Reference -> content key label ("" without one) from `ctr images ls` output, whose last
    column is the image's labels (`a=b,c=d`, or `-`)."""
    keys: dict[str, str] = {}
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 2:
            continue
        labels = dict(label.partition("=")[::2] for label in fields[-1].split(","))
        keys[fields[0]] = labels.get(KEY_LABEL, "")
    return keys


def import_images(
    ctr: Path,
    address: str,
    images: list[BuiltImage],
    *,
    snapshotter: str | None = None,
    progress: Callable[[str], None] = print,
) -> None:
    """Import (and unpack, for the CRI to run them) `images` into the containerd at `address`,
    namespace k8s.io, skipping those already there with the same content key."""
    if shutil.which(ctr) is None and ctr.name == "ctr":
        install_debian_packages(["containerd"], why="importing images with ctr")
    present = imported_keys(ctr, address)
    unpack = ["--snapshotter", snapshotter] if snapshotter else []
    for image in images:
        if present.get(image.ref) == image.key:
            progress(f"image {image.ref}: already in containerd")
            continue
        started = time.monotonic()
        _ctr(ctr, address, "images", "import", *unpack, str(image.archive))
        _ctr(ctr, address, "images", "label", image.ref, f"{KEY_LABEL}={image.key}")
        progress(f"image {image.ref}: imported in {time.monotonic() - started:.0f} s")


def _ctr(ctr: Path, address: str, *args: str) -> str:
    argv = [str(ctr), "--address", address, "--namespace", "k8s.io", *args]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise HarnessError(f"{shlex.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the missing images into the cache")
    load = commands.add_parser(
        "import", help="build the missing images, import them into containerd"
    )
    for command in (build, load):
        command.add_argument(
            "--cache", type=Path, required=True, help="cache folder (Makefile's CACHE)"
        )
    load.add_argument("--address", required=True, help="containerd's socket")
    load.add_argument("--ctr", type=Path, default=Path("ctr"), help="the ctr program")
    load.add_argument("--snapshotter", help="snapshotter to unpack into (containerd's default)")
    args = parser.parse_args()
    try:
        images = ensure_images(args.cache)
        if args.command == "import":
            import_images(args.ctr, args.address, images, snapshotter=args.snapshotter)
    except HarnessError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
