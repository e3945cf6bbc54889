"""The node's image builds (harness/images.py), without building any image: content keys change
exactly when what an image is made of changes, a cached archive is used as it is, and the names
are the ones the charts pull by default."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import images
from harness.images import (
    Builder,
    DebianImage,
    DockerfileImage,
    GoBinary,
    ImageConfig,
    PauseProgram,
    content_key,
)

CHARTS = images.REPO / "charts"
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "commit.gpgsign=false", *args],
        env={**os.environ, **GIT_IDENTITY},
        check=True,
        capture_output=True,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository whose Dockerfile copies pyproject.toml and app/ (not docs/)."""
    root = tmp_path / "repo"
    (root / "app").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "Dockerfile").write_text(
        "ARG BASE=x\nFROM ${BASE} AS builder\nCOPY pyproject.toml ./\nCOPY app ./app\n"
        "FROM ${BASE}\nCOPY --from=builder /venv /venv\n"
    )
    (root / ".dockerignore").write_text("docs\n")
    (root / ".gitignore").write_text("__pycache__/\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'app'\n")
    (root / "app" / "main.py").write_text("print('hello')\n")
    (root / "docs" / "notes.md").write_text("notes\n")
    git(root, "init", "--quiet")
    git(root, "add", ".")
    git(root, "commit", "--quiet", "-m", "first")
    return root


def image_of(repo: Path, base: images.Recipe = images.PYTHON_BASE) -> DockerfileImage:
    return DockerfileImage(
        name="app", ref="localhost/test/app:1", duration="", repo=repo, base=base, version="1"
    )


def test_the_dockerfile_copies_are_what_the_key_covers() -> None:
    dockerfile = (images.REPO / "Dockerfile").read_text()
    assert images.dockerfile_copy_sources(dockerfile) == [
        "pyproject.toml", "uv.lock", "README.md",
        "kubeagents", "sidecar", "probe", "runtime", "operator",
    ]  # fmt: skip


def test_the_key_stays_the_same_while_nothing_changes(repo: Path) -> None:
    assert image_of(repo).key() == image_of(repo).key()
    keys = [recipe.key() for recipe in images.NODE_IMAGES]
    assert keys == [recipe.key() for recipe in images.NODE_IMAGES]
    assert len(set(keys)) == len(keys)


def test_a_change_to_a_copied_file_changes_the_key_and_undoing_it_restores_it(repo: Path) -> None:
    before = image_of(repo).key()
    main = repo / "app" / "main.py"
    main.write_text("print('changed')\n")
    assert image_of(repo).key() != before
    main.write_text("print('hello')\n")
    assert image_of(repo).key() == before


def test_a_new_file_in_a_copied_folder_changes_the_key(repo: Path) -> None:
    before = image_of(repo).key()
    (repo / "app" / "extra.py").write_text("x = 1\n")
    assert image_of(repo).key() != before


def test_files_the_build_does_not_copy_leave_the_key_alone(repo: Path) -> None:
    before = image_of(repo).key()
    (repo / "docs" / "notes.md").write_text("other notes\n")
    (repo / "app" / "__pycache__").mkdir()
    (repo / "app" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    assert image_of(repo).key() == before
    git(repo, "commit", "--quiet", "-am", "docs only")
    assert image_of(repo).key() == before  # the revision is the last commit of the copied files


def test_the_dockerfile_the_base_and_the_revision_are_part_of_the_key(repo: Path) -> None:
    before = image_of(repo).key()
    other_base = dataclasses.replace(images.PYTHON_BASE, packages=["python3"])
    assert image_of(repo, base=other_base).key() != before

    dockerfile = repo / "Dockerfile"
    text = dockerfile.read_text()
    dockerfile.write_text(text + "USER 10001\n")
    assert image_of(repo).key() != before
    dockerfile.write_text(text)

    (repo / "app" / "main.py").write_text("print('changed')\n")
    modified = image_of(repo).key()
    git(repo, "commit", "--quiet", "-am", "change")
    # Same content, but the image is now labelled with the new commit.
    assert image_of(repo).key() not in (before, modified)


def test_the_other_images_keys_follow_what_they_are_made_of() -> None:
    valkey = images.VALKEY
    assert dataclasses.replace(valkey, backports=["valkey-server"]).key() != valkey.key()
    assert dataclasses.replace(valkey, packages=["valkey-server"]).key() != valkey.key()
    assert dataclasses.replace(valkey, hooks=[]).key() != valkey.key()
    user = dataclasses.replace(valkey.config, user="1000")
    assert dataclasses.replace(valkey, config=user).key() != valkey.key()

    coredns = images.COREDNS
    newer = dataclasses.replace(images.COREDNS_BUILD, version="v1.12.5")
    assert dataclasses.replace(coredns, source=GoBinary(newer, "coredns")).key() != coredns.key()

    pause = images.PAUSE
    assert dataclasses.replace(pause, source=PauseProgram("3.11")).key() != pause.key()


def test_the_images_carry_the_names_the_charts_pull_by_default() -> None:
    platform = yaml.safe_load((CHARTS / "kubeagents" / "values.yaml").read_text())
    server = platform["redis"]["statefulset"]["image"]
    assert f"{server['registry']}/{server['repository']}:{server['tag']}" == images.VALKEY_IMAGE
    assert server["flavor"] == "valkey"  # the image holds valkey-server and valkey-cli

    for chart, image in (
        ("agent", yaml.safe_load((CHARTS / "agent" / "values.yaml").read_text())["image"]),
        ("kubeagents", platform["operator"]["image"]),
    ):
        app_version = yaml.safe_load((CHARTS / chart / "Chart.yaml").read_text())["appVersion"]
        assert image["tag"] == ""  # the tag is the chart's appVersion
        assert f"{image['repository']}:{app_version}" == images.KUBEAGENTS_IMAGE


def test_a_cached_archive_is_used_without_building(tmp_path: Path) -> None:
    builder = Builder(tmp_path, print)
    expected = {}
    builder.dir.mkdir()
    for recipe in images.NODE_IMAGES:
        archive = builder.archive(recipe, recipe.key())
        archive.write_bytes(b"an archive")
        expected[recipe.ref] = archive
    lines: list[str] = []

    built = images.ensure_images(tmp_path, progress=lines.append)

    assert {image.ref: image.archive for image in built} == expected
    assert lines == [f"image {recipe.ref}: cached" for recipe in images.NODE_IMAGES]


def test_older_archives_of_an_image_are_removed(tmp_path: Path) -> None:
    builder = Builder(tmp_path, print)
    builder.dir.mkdir()
    keep = builder.archive(images.PAUSE, "a" * 64)
    older = builder.archive(images.PAUSE, "b" * 64)
    other = builder.archive(images.BUSYBOX, "c" * 64)
    for path in (keep, older, other):
        path.write_bytes(b"")
    builder.remove_older_archives(images.PAUSE, keep)
    assert sorted(p.name for p in builder.dir.iterdir()) == sorted([keep.name, other.name])


def test_labels_carry_the_version_found_while_building() -> None:
    config = ImageConfig(user="999:1000", labels={"version": "{version}", "title": "redis"})
    args = config.buildah_args(key="k" * 64, version="5:7.0.15-1~deb12u10")
    assert args == [
        "--env", f"PATH={images.PATH_ENV}",
        "--label", "version=5:7.0.15-1~deb12u10", "--label", "title=redis",
        "--label", f"{images.KEY_LABEL}={'k' * 64}",
        "--user", "999:1000",
    ]  # fmt: skip
    assert images.upstream_version("1:1.35.0-4+deb12u1+b1") == images.BUSYBOX_VERSION
    assert images.upstream_version("5:7.0.15-1~deb12u10") == "7.0.15"


def test_a_debian_image_key_covers_its_packages_not_their_order() -> None:
    base = images.PYTHON_BASE
    reordered = dataclasses.replace(base, packages=list(reversed(base.packages)))
    assert isinstance(reordered, DebianImage)
    assert reordered.key() == base.key()


def test_containerd_image_listing_is_read_with_the_key_labels() -> None:
    listing = (
        "REF TYPE DIGEST SIZE PLATFORMS LABELS\n"
        "docker.io/valkey/valkey:8.0 application/vnd.docker.distribution.manifest.v2+json "
        "sha256:26 133.1 MiB linux/amd64 "
        f"io.cri-containerd.image=managed,{images.KEY_LABEL}=abc\n"
        "localhost/kubeagents/pause:3.10 application/vnd.oci.image.manifest.v1+json sha256:4e "
        "673.6 KiB linux/amd64 -\n"
    )
    assert images.parse_image_list(listing) == {
        images.VALKEY_IMAGE: "abc",
        images.PAUSE_IMAGE: "",
    }
    assert content_key({"a": 1, "b": 2}) == content_key({"b": 2, "a": 1})


def test_the_pause_program_is_static_and_stops_cleanly_on_sigterm_and_sigint(
    tmp_path: Path,
) -> None:
    binary = tmp_path / "pause"
    images.compile_pause(binary, "3.10", lambda argv: subprocess.run(argv, check=True))
    assert images.is_static_elf(binary)
    assert not images.is_static_elf(Path(sys.executable).resolve())
    assert not images.is_static_elf(tmp_path / "pause.c")
    version = subprocess.run([str(binary), "-v"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("pause 3.10 ")
    for signo in (signal.SIGTERM, signal.SIGINT):
        process = subprocess.Popen([str(binary)], stderr=subprocess.PIPE, text=True)
        assert process.stderr is not None
        assert "not PID 1" in process.stderr.readline()  # written once its handlers are set
        process.send_signal(signo)
        assert process.wait(timeout=5) == 0
        process.stderr.close()
