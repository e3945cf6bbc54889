"""A real node for the local control plane: containerd, the kubelet and kube-proxy.

Laid out like Kubernetes' own `hack/local-up-cluster.sh`: the kubelet and kube-proxy come from
the same pinned `k8s.io/kubernetes` build as the control plane, each with its configuration file
and a client certificate from the cluster's CA; containerd (Debian's 1.6) runs pods with runc and
the standard CNI plugins (bridge, host-local, portmap, loopback). What this machine needs beyond
the script's defaults (checked in ../shared/NOTES.md):

- cgroup v1: kubelet 1.35 refuses it unless `failCgroupV1: false`; the driver is `cgroupfs`;
- the VM refuses a negative `oom_score_adj`, so containerd's CRI sets `restrict_oom_score_adj`;
- the API server reaches the kubelet by the node's InternalIP (the node's name does not resolve).

Everything the node owns lives in one work folder (containerd's root and state, the kubelet's
root, the CNI configuration, the volumes of the local-path provisioner) and one network namespace
(harness/node_network.py); its pods' cgroups sit under `/kubeagents-node-N`. `remove_node` undoes
all of it from the recorded facts alone, so `make cluster-down` can clean up after a crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.binaries import tool
from harness.node_network import NodeNetwork, delete_network
from harness.pki import CertificateAuthority, write_kubeconfig
from harness.processes import HarnessError, ManagedProcess

NODE_NAME = "kubeagents-node"
SERVICE_CIDR = "10.96.0.0/16"
CLUSTER_DNS = "10.96.0.10"
POD_CIDR = "10.244.0.0/16"
CNI_BIN_DIR = Path("/usr/lib/cni")
CGROUP_V1 = Path("/sys/fs/cgroup")
START_TIMEOUT = 120.0
# Debian packages the node runs on, by the program each provides.
DEBIAN_PACKAGES = {
    "containerd": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "conntrack": "conntrack",
    str(CNI_BIN_DIR / "bridge"): "containernetworking-plugins",
}


@dataclass(frozen=True)
class NodeLayout:
    """Where a node's state lives; recorded by `make cluster-up` so `down` can remove it all."""

    workdir: str
    slot: int

    @property
    def root(self) -> Path:
        return Path(self.workdir) / "node"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def cgroup_parent(self) -> str:
        return f"kubeagents-node-{self.slot}"

    @property
    def storage(self) -> Path:
        """Where the local-path provisioner makes the volumes of PersistentVolumeClaims."""
        return self.root / "volumes"

    @property
    def network(self) -> NodeNetwork:
        return NodeNetwork(self.slot)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def unmet_requirements() -> list[str]:
    """Why this machine cannot run a real node, in words a user can act on; [] when it can."""
    problems = []
    if os.geteuid() != 0:
        problems.append(
            "not root: containerd, the kubelet and the node's network namespace need root "
            "(run as root, e.g. in a VM)"
        )
    if not (CGROUP_V1 / "memory").is_dir() and not (CGROUP_V1 / "cgroup.controllers").exists():
        problems.append(f"no cgroups mounted at {CGROUP_V1}")
    if not Path("/proc/sys/net/bridge").is_dir():
        problems.append("the kernel has no bridge netfilter (modprobe br_netfilter)")
    if shutil.which("ip") is None:
        problems.append("`ip` (iproute2) is missing")
    return problems


def install_packages() -> None:
    """Install the node's Debian packages that are missing (as root)."""
    missing = sorted(
        {
            package
            for program, package in DEBIAN_PACKAGES.items()
            if shutil.which(program) is None and not Path(program).exists()
        }
    )
    if not missing:
        return
    print(f"installing {', '.join(missing)} from Debian packages", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "RUNLEVEL": "1"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]
    for argv in (["apt-get", "update", "-qq"], install):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise HarnessError(f"{' '.join(argv)} failed:\n{result.stderr[-2000:]}")


# --- containerd ------------------------------------------------------------------------------


def containerd_config(layout: NodeLayout, sandbox_image: str) -> str:
    root = layout.root / "containerd"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""\
version = 2
root = "{root / "root"}"
state = "{root / "state"}"
# Snapshotters and plugins this node does not use, so their probes do not fill the log.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{layout.containerd_socket}"

[{cri}]
  sandbox_image = "{sandbox_image}"
  # This VM refuses a negative oom_score_adj even to root (../shared/NOTES.md).
  restrict_oom_score_adj = true
  # Pod network namespaces under the state folder, not the host's /var/run/netns.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{layout.root / "cni"}"
"""


def cni_config() -> str:
    return json.dumps(
        {
            "cniVersion": "0.4.0",
            "name": "kubeagents",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=2,
    )


def ctr(layout: NodeLayout, *args: str) -> str:
    result = subprocess.run(
        ["ctr", "--address", str(layout.containerd_socket), "-n", "k8s.io", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if result.returncode != 0:
        raise HarnessError(f"ctr {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


# --- kubelet and kube-proxy -------------------------------------------------------------------


def kubelet_config(layout: NodeLayout, ca: Path, serving_cert: Path, serving_key: Path) -> str:
    return json.dumps(
        {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # cgroup v1 on this VM (KEP-5573 made 1.35 refuse it by default).
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            # The node's own branch of the cgroup tree, so two local nodes never clean up each
            # other's pods.
            "cgroupRoot": f"/{layout.cgroup_parent}",
            "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
            "address": layout.network.node_ip,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "tlsCertFile": str(serving_cert),
            "tlsPrivateKeyFile": str(serving_key),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(ca)},
            },
            "authorization": {"mode": "Webhook"},
            "clusterDNS": [CLUSTER_DNS],
            "clusterDomain": "cluster.local",
            "resolvConf": "/etc/resolv.conf",
            "failSwapOn": False,
            # Images are built here and cannot be pulled again: never garbage-collect them.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "2%",
                "imagefs.available": "2%",
                "nodefs.inodesFree": "2%",
            },
            "serializeImagePulls": False,
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
            "nodeStatusReportFrequency": "10s",
            "shutdownGracePeriod": "0s",
        },
        indent=2,
    )


def kube_proxy_config(layout: NodeLayout, kubeconfig: Path) -> str:
    return json.dumps(
        {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": NODE_NAME,
            "bindAddress": layout.network.node_ip,
            "clusterCIDR": POD_CIDR,
            "mode": "iptables",
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            # conntrack sysctls are read-only in a network namespace: leave them as they are.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        },
        indent=2,
    )


def _prepare_cgroups(layout: NodeLayout) -> None:
    """Create the node's cgroup in every v1 hierarchy (the kubelet requires cgroupRoot)."""
    for hierarchy in _hierarchies():
        path = hierarchy / layout.cgroup_parent
        path.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":
            for setting in ("cpuset.cpus", "cpuset.mems"):
                (path / setting).write_text((hierarchy / setting).read_text())


def _hierarchies() -> list[Path]:
    if (CGROUP_V1 / "cgroup.controllers").exists():
        return [CGROUP_V1]
    return [
        path
        for path in sorted(CGROUP_V1.iterdir())
        if path.is_dir() and not path.is_symlink() and (path / "cgroup.procs").exists()
    ]


@dataclass
class NodeCredentials:
    kubelet_kubeconfig: Path
    kube_proxy_kubeconfig: Path
    serving_cert: Path
    serving_key: Path
    ca: Path


def issue_node_credentials(
    ca: CertificateAuthority, layout: NodeLayout, server: str
) -> NodeCredentials:
    network = layout.network
    layout.root.mkdir(parents=True, exist_ok=True)
    node_user = f"system:node:{NODE_NAME}"
    kubelet = ca.issue("kubelet", node_user, organization="system:nodes")
    proxy = ca.issue("kube-proxy", "system:kube-proxy")
    serving = ca.issue("kubelet-serving", NODE_NAME, server_hosts=(NODE_NAME, network.node_ip))
    root = layout.root
    return NodeCredentials(
        kubelet_kubeconfig=write_kubeconfig(
            root / "kubelet.kubeconfig", server=server, ca=ca.cert_path, client=kubelet,
            user=node_user,
        ),
        kube_proxy_kubeconfig=write_kubeconfig(
            root / "kube-proxy.kubeconfig", server=server, ca=ca.cert_path, client=proxy,
            user="system:kube-proxy",
        ),
        serving_cert=serving.cert,
        serving_key=serving.key,
        ca=ca.cert_path,
    )  # fmt: skip


def start_node(
    layout: NodeLayout,
    credentials: NodeCredentials,
    *,
    sandbox_image: str,
    import_images: object = None,
) -> list[ManagedProcess]:
    """Start containerd, then the kubelet and kube-proxy, inside the node's namespace.

    `import_images`, when given, is called with the containerd socket once containerd answers
    and before the kubelet starts, so the pause image is there for the first pod sandbox."""
    network = layout.network
    root = layout.root
    logs = Path(layout.workdir) / "logs"
    for folder in ("containerd", "cni", "kubelet", "volumes"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "containerd.toml").write_text(containerd_config(layout, sandbox_image))
    (root / "cni" / "10-kubeagents.conflist").write_text(cni_config())
    _prepare_cgroups(layout)
    processes: list[ManagedProcess] = []
    try:
        containerd = ManagedProcess(
            "containerd",
            [*network.exec_prefix(), "containerd", "--config", str(root / "containerd.toml")],
            logs / "containerd.log",
        )
        processes.append(containerd)
        containerd.wait_until(
            lambda: ctr(layout, "version") != "",
            timeout=START_TIMEOUT,
            what="containerd to answer",
        )
        if callable(import_images):
            import_images(layout.containerd_socket)
        (root / "kubelet.json").write_text(
            kubelet_config(
                layout, credentials.ca, credentials.serving_cert, credentials.serving_key
            )
        )
        kubelet = ManagedProcess(
            "kubelet",
            [
                *network.exec_prefix(), str(tool("kubelet")),
                "--config", str(root / "kubelet.json"),
                "--kubeconfig", str(credentials.kubelet_kubeconfig),
                "--hostname-override", NODE_NAME,
                "--node-ip", network.node_ip,
                "--root-dir", str(root / "kubelet"),
                "--node-labels", "kubeagents.io/node=real",
                "--v", "1",
            ],
            logs / "kubelet.log",
        )  # fmt: skip
        processes.append(kubelet)
        (root / "kube-proxy.json").write_text(
            kube_proxy_config(layout, credentials.kube_proxy_kubeconfig)
        )
        processes.append(
            ManagedProcess(
                "kube-proxy",
                [*network.exec_prefix(), str(tool("kube-proxy")),
                 "--config", str(root / "kube-proxy.json"), "--v", "1"],
                logs / "kube-proxy.log",
            )
        )  # fmt: skip
    except BaseException:
        for process in reversed(processes):
            process.stop()
        raise
    return processes


# --- removal ----------------------------------------------------------------------------------


def remove_node(layout: NodeLayout) -> None:
    """Kill what the node's containers left, unmount its volumes, drop its cgroups and network.

    Call after the kubelet and containerd stopped; safe to call twice and after a crash."""
    socket = str(layout.containerd_socket)
    for pid in _pids():
        cmdline = _cmdline(pid)
        if "containerd-shim" in cmdline and socket in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for hierarchy in _hierarchies():
        _kill_and_remove(hierarchy / layout.cgroup_parent)
    root = str(layout.root)
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(root)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    delete_network(layout.network)


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _kill_and_remove(cgroup: Path) -> None:
    if not cgroup.is_dir():
        return
    deadline = time.monotonic() + 10
    for child in sorted(cgroup.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if child.is_dir():
            _drain(child, deadline)
    _drain(cgroup, deadline)


def _drain(cgroup: Path, deadline: float) -> None:
    while True:
        with contextlib.suppress(OSError):
            for pid in (cgroup / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        with contextlib.suppress(OSError):
            cgroup.rmdir()
            return
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
