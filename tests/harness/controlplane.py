"""A real Kubernetes control plane as local processes: etcd, kube-apiserver, controller-manager,
scheduler, and kwok simulating the nodes (pods get scheduled, then reported Running and Ready).

Like controller-runtime's envtest, but with the controllers, the scheduler and simulated nodes, so
Deployments roll out and `helm install --wait` completes. Binaries come from `make tools`
(tests/harness/go_builds.py). Everything listens on free loopback ports; RBAC is on; each
component has its own client certificate and kubeconfig. Processes are started and stopped by
PID, with their logs in the work folder.

For people:  python -m harness.controlplane up|down|status --dir DIR   (see `make cluster-up`)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import ssl
import string
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from harness.binaries import tool, tools_dir
from harness.node import (
    CLUSTER_DNS,
    SERVICE_CIDR,
    NodeLayout,
    install_packages,
    issue_node_credentials,
    remove_node,
    start_node,
    unmet_requirements,
)
from harness.node_network import create_network
from harness.pki import CertificateAuthority, service_account_keys, write_kubeconfig
from harness.processes import HarnessError, ManagedProcess, free_port, wait_for

START_TIMEOUT = 90.0
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
API_SERVER_HOSTS = (
    "127.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
KUBERNETES_SERVICE_IP = "10.96.0.1"
STATE_FILE = "cluster.json"
ADDONS = Path(__file__).resolve().parent / "addons"
# kwok's own defaults: the built-in node and pod stages (nodes Ready with leases, pods Running).
KWOK_CONFIG = """\
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options: {}
"""


@dataclass
class ControlPlane:
    """A running control plane: its admin kubeconfig, API server URL and processes."""

    workdir: Path
    kubeconfig: Path
    server: str
    processes: list[ManagedProcess] = field(default_factory=list)
    # The real node's layout (None: kwok nodes only); removed after the processes stop.
    node: NodeLayout | None = None

    def env(self) -> dict[str, str]:
        """The environment for helm, kubectl and ct against this control plane."""
        path = os.pathsep.join([str(tools_dir()), str(Path(sys.executable).parent)])
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{path}:{os.environ['PATH']}",
        }

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this control plane."""
        return run_kubectl(self.kubeconfig, *args, check=check)

    def api_client(self, *, timeout: float | None = 5.0) -> httpx.Client:
        """An HTTPS client of the API server as the admin (`base_url` is the server's URL)."""
        pki = self.workdir / "pki"
        client = _https_client(pki / "ca.crt", pki / "admin.crt", pki / "admin.key")
        client.base_url = httpx.URL(self.server)
        client.timeout = httpx.Timeout(timeout)
        return client

    def install_crds(self, files: Sequence[Path]) -> list[str]:
        """Apply the CRDs in `files` (server-side) and wait until each is Established; their
        names."""
        for file in files:
            self.kubectl("apply", "--server-side", "-f", str(file))
        names = [
            line.split("/", 1)[1]
            for file in files
            for line in self.kubectl("get", "-f", str(file), "-o", "name").stdout.split()
        ]
        self.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            *(f"crd/{name}" for name in names),
        )  # fmt: skip
        return names

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        if self.node is not None:
            remove_node(self.node)


def run_kubectl(
    kubeconfig: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(tool("kubectl")), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if check and result.returncode != 0:
        raise HarnessError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _https_client(ca: Path, cert: Path, key: Path) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    return httpx.Client(verify=context, timeout=5)


def _fake_node(name: str) -> dict[str, Any]:
    capacity = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "500Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def _nodes_ready(kubeconfig: Path, count: int) -> bool:
    listed = json.loads(run_kubectl(kubeconfig, "get", "nodes", "-o", "json").stdout)["items"]
    ready = [
        node
        for node in listed
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in node.get("status", {}).get("conditions", [])
        )
    ]
    return len(ready) >= count


def wait_for_default_service_account(kubeconfig: Path) -> None:
    """Pods can only be created once the service-account controller made `default`."""
    wait_for(
        lambda: (
            run_kubectl(kubeconfig, "get", "serviceaccount", "default", check=False).returncode == 0
        ),
        timeout=START_TIMEOUT,
        what="the default service account",
    )


def start_control_plane(
    workdir: Path,
    *,
    nodes: int = 2,
    real_node: RealNodeOptions | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> ControlPlane:
    """Start etcd, the API server, controller-manager, scheduler and kwok with `nodes` nodes,
    plus a real node (containerd, kubelet, kube-proxy, cluster DNS, storage) when asked."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(workdir / "etcd", ignore_errors=True)  # every start is a new, empty cluster
    logs = workdir / "logs"
    pki = workdir / "pki"
    ca = CertificateAuthority(pki)
    sa = service_account_keys(pki)
    plane = ControlPlane(workdir, workdir / "admin.kubeconfig", "")
    bind_address = "127.0.0.1"
    if real_node is not None:
        real_node.check_machine()
        network = create_network(egress=real_node.egress)
        plane.node = NodeLayout(str(workdir), network.slot)
        bind_address = network.host_ip
    serving = ca.issue(
        "apiserver",
        "kube-apiserver",
        server_hosts=(*API_SERVER_HOSTS, KUBERNETES_SERVICE_IP, bind_address),
    )
    admin = ca.issue("admin", "kubeagents-admin", organization="system:masters")
    try:
        etcd_port, peer_port = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        plane.processes.append(
            ManagedProcess(
                "etcd",
                [
                    str(tool("etcd")), "--name", "default", "--data-dir", str(workdir / "etcd"),
                    "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                    "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                    "--initial-cluster", f"default={peer_url}", "--unsafe-no-fsync",
                    "--log-level", "warn",
                ],
                logs / "etcd.log",
            )
        )  # fmt: skip
        with httpx.Client(timeout=2) as client:
            plane.processes[-1].wait_until(
                lambda: client.get(f"{etcd_url}/health").json()["health"] == "true",
                timeout=START_TIMEOUT,
                what="etcd /health",
            )

        api_port = free_port()
        plane.server = f"https://{bind_address}:{api_port}"
        node_flags: list[str] = ["--endpoint-reconciler-type", "none"]
        if plane.node is not None:
            kubelet_client = ca.issue(
                "apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                organization="system:masters",
            )  # fmt: skip
            node_flags = [
                # Pods reach the API server through the `kubernetes` Service's endpoint.
                "--endpoint-reconciler-type", "lease",
                "--kubelet-preferred-address-types", "InternalIP",
                "--kubelet-client-certificate", str(kubelet_client.cert),
                "--kubelet-client-key", str(kubelet_client.key),
                "--enable-admission-plugins", "NodeRestriction",
            ]  # fmt: skip
        plane.processes.append(
            ManagedProcess(
                "kube-apiserver",
                [
                    str(tool("kube-apiserver")),
                    "--etcd-servers", etcd_url,
                    "--bind-address", bind_address, "--advertise-address", bind_address,
                    "--secure-port", str(api_port),
                    "--tls-cert-file", str(serving.cert),
                    "--tls-private-key-file", str(serving.key),
                    "--client-ca-file", str(ca.cert_path),
                    "--authorization-mode", "Node,RBAC",
                    "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
                    "--service-account-key-file", str(sa.cert),
                    "--service-account-signing-key-file", str(sa.key),
                    "--service-cluster-ip-range", SERVICE_CIDR,
                    *node_flags,
                    "--allow-privileged=true",
                    "--profiling=false",
                ],
                logs / "kube-apiserver.log",
            )
        )  # fmt: skip
        with _https_client(ca.cert_path, admin.cert, admin.key) as client:
            plane.processes[-1].wait_until(
                lambda: client.get(f"{plane.server}/readyz").status_code == 200,
                timeout=START_TIMEOUT,
                what="kube-apiserver /readyz",
            )
        write_kubeconfig(
            plane.kubeconfig, server=plane.server, ca=ca.cert_path, client=admin, user="admin"
        )

        components = {
            "kube-controller-manager": [
                "--use-service-account-credentials=true",
                "--service-account-private-key-file", str(sa.key),
                "--root-ca-file", str(ca.cert_path),
                "--cluster-signing-cert-file", str(ca.cert_path),
                "--cluster-signing-key-file", str(pki / "ca.key"),
            ],
            "kube-scheduler": [],
        }  # fmt: skip
        for component, extra in components.items():
            user = f"system:{component}"
            kubeconfig = write_kubeconfig(
                workdir / f"{component}.kubeconfig",
                server=plane.server,
                ca=ca.cert_path,
                client=ca.issue(component, user),
                user=user,
            )
            plane.processes.append(
                ManagedProcess(
                    component,
                    [str(tool(component)), "--kubeconfig", str(kubeconfig),
                     "--leader-elect=false", "--secure-port=0", *extra],
                    logs / f"{component}.log",
                )
            )  # fmt: skip

        if plane.node is not None and real_node is not None:
            start_real_node(plane, ca, real_node, progress)
        if nodes == 0:
            wait_for_default_service_account(plane.kubeconfig)
            return plane
        kwok_config = workdir / "kwok.yaml"
        kwok_config.write_text(KWOK_CONFIG)
        kwok_kubeconfig = write_kubeconfig(
            workdir / "kwok.kubeconfig",
            server=plane.server,
            ca=ca.cert_path,
            client=ca.issue("kwok", "kwok", organization="system:masters"),
            user="kwok",
        )
        plane.processes.append(
            ManagedProcess(
                "kwok",
                [
                    str(tool("kwok")), "--kubeconfig", str(kwok_kubeconfig),
                    "--config", str(kwok_config),
                    "--manage-all-nodes=false",
                    "--manage-nodes-with-annotation-selector", f"{KWOK_NODE_ANNOTATION}=fake",
                    "--node-lease-duration-seconds", "40",
                    "--cidr", "10.244.0.1/16", "--node-ip", "127.0.0.1",
                ],
                logs / "kwok.log",
            )
        )  # fmt: skip
        node_list = {
            "apiVersion": "v1",
            "kind": "List",
            "items": [_fake_node(f"kwok-node-{index}") for index in range(nodes)],
        }
        nodes_file = workdir / "nodes.json"
        nodes_file.write_text(json.dumps(node_list))
        run_kubectl(plane.kubeconfig, "apply", "-f", str(nodes_file))
        plane.processes[-1].wait_until(
            lambda: _nodes_ready(plane.kubeconfig, nodes),
            timeout=START_TIMEOUT,
            what=f"{nodes} kwok nodes to be Ready",
        )
        wait_for_default_service_account(plane.kubeconfig)
    except BaseException as error:
        exited = [p.failure_message("exited") for p in plane.processes if not p.alive()]
        plane.stop()
        if isinstance(error, HarnessError):
            detail = "".join(f"\n{message}" for message in exited if message not in str(error))
            raise HarnessError(f"control plane did not start: {error}{detail}") from None
        raise
    return plane


@dataclass(frozen=True)
class RealNodeOptions:
    """What a real node needs from outside: the image cache, and whether pods reach beyond the
    machine (`egress`: the real Anthropic API)."""

    cache: Path
    egress: bool = False

    def check_machine(self) -> None:
        problems = unmet_requirements()
        if problems:
            raise HarnessError(
                "this machine cannot run a real node:\n" + "\n".join(f"- {p}" for p in problems)
            )
        install_packages()


def start_real_node(
    plane: ControlPlane,
    ca: CertificateAuthority,
    options: RealNodeOptions,
    progress: Callable[[str], None],
) -> None:
    """Build and import the images, start the node (its processes join `plane.processes` at
    once, so a failure later stops them), then its cluster DNS and default StorageClass."""
    from harness import images  # only a real node needs the image builds

    assert plane.node is not None
    layout = plane.node
    built = images.ensure_images(options.cache, progress=progress)
    credentials = issue_node_credentials(ca, layout, plane.server)

    def import_into(socket: Path) -> None:
        started = time.monotonic()
        images.import_images(Path(shutil.which("ctr") or "ctr"), str(socket), built)
        progress(f"images imported into the node in {time.monotonic() - started:.0f}s")

    processes = start_node(
        layout, credentials, sandbox_image=images.PAUSE_IMAGE, import_images=import_into
    )
    plane.processes += processes
    kubelet = next(p for p in processes if p.name == "kubelet")
    kubelet.wait_until(
        lambda: _nodes_ready(plane.kubeconfig, 1),
        timeout=START_TIMEOUT,
        what="the real node to be Ready",
    )
    progress("node Ready; starting cluster DNS and the local-path StorageClass")
    for addon in ("coredns.yaml", "local-path-storage.yaml"):
        text = string.Template((ADDONS / addon).read_text()).substitute(
            COREDNS_IMAGE=images.COREDNS_IMAGE,
            CLUSTER_DNS=CLUSTER_DNS,
            PROVISIONER_IMAGE=images.PROVISIONER_IMAGE,
            HELPER_IMAGE=images.BUSYBOX_IMAGE,
            STORAGE_PATH=str(layout.storage),
        )
        manifest = plane.workdir / addon
        manifest.write_text(text)
        run_kubectl(plane.kubeconfig, "apply", "-f", str(manifest))
    for namespace, deployment in (
        ("kube-system", "coredns"),
        ("local-path-storage", "local-path-provisioner"),
    ):
        run_kubectl(
            plane.kubeconfig, "-n", namespace, "rollout", "status", f"deployment/{deployment}",
            f"--timeout={START_TIMEOUT:.0f}s",
        )  # fmt: skip


# --- make cluster-up / cluster-down --------------------------------------------------------


def program_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _stop_recorded(state: dict[str, Any]) -> None:
    """SIGTERM every recorded process that still runs the recorded program, then SIGKILL."""
    alive = [p for p in state["processes"] if p["program"] in program_cmdline(p["pid"])]
    for process in alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 15
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p["program"] in program_cmdline(p["pid"])]
        time.sleep(0.1)
    for process in alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process["pid"], signal.SIGKILL)
    if state.get("node"):
        remove_node(NodeLayout(**state["node"]))


def _program(process: ManagedProcess) -> str:
    """The program a recorded PID runs (`nsenter --net=NS -- PROGRAM …` execs PROGRAM)."""
    argv = process.argv
    return argv[3] if argv[0] == "nsenter" else argv[0]


def read_state(workdir: Path) -> dict[str, Any] | None:
    state_path = workdir / STATE_FILE
    return json.loads(state_path.read_text()) if state_path.exists() else None


def is_running(state: dict[str, Any]) -> bool:
    return all(p["program"] in program_cmdline(p["pid"]) for p in state["processes"])


def stop_recorded(workdir: Path) -> bool:
    """Stop the cluster recorded in `workdir` (and remove its real node); False if none was."""
    state = read_state(workdir)
    if state is None:
        return False
    _stop_recorded(state)
    (workdir / STATE_FILE).unlink()
    return True


def ensure_up(
    workdir: Path,
    *,
    nodes: int,
    real_node: RealNodeOptions | None,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """The recorded cluster of `workdir` when it runs with the same kind of nodes; otherwise a
    new one, started and recorded (its processes outlive this program; `down` stops them)."""
    state = read_state(workdir)
    if state is not None and is_running(state) and bool(state.get("node")) == bool(real_node):
        progress(f"control plane already running: {state['server']}")
        return state
    if state is not None:
        progress("stopping the cluster recorded in " + str(workdir))
        stop_recorded(workdir)
    started = time.monotonic()
    plane = start_control_plane(workdir, nodes=nodes, real_node=real_node, progress=progress)
    record = {
        "server": plane.server,
        "kubeconfig": str(plane.kubeconfig),
        "processes": [{"pid": p.pid, "program": _program(p)} for p in plane.processes],
        "node": plane.node.to_json() if plane.node else None,
    }
    (workdir / STATE_FILE).write_text(json.dumps(record, indent=2))
    progress(f"control plane up in {time.monotonic() - started:.1f}s: {plane.server}")
    return record


def main() -> int:
    parser = argparse.ArgumentParser(description="A local Kubernetes control plane.")
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--dir", type=Path, required=True, help="work folder (state, logs, pki)")
    parser.add_argument("--nodes", type=int, default=2, help="how many kwok nodes (up)")
    parser.add_argument(
        "--real-node", action="store_true", help="also a real node: containerd, kubelet (up)"
    )
    parser.add_argument("--cache", type=Path, help="the image cache folder (with --real-node)")
    parser.add_argument(
        "--egress", action="store_true", help="let the real node's pods reach beyond the machine"
    )
    args = parser.parse_args()
    workdir: Path = args.dir.resolve()
    if args.action == "down":
        if stop_recorded(workdir):
            print(f"control plane stopped (logs kept in {workdir / 'logs'})")
        else:
            print(f"no control plane recorded in {workdir}")
        return 0
    if args.action == "status":
        state = read_state(workdir)
        if state is not None and is_running(state):
            print(f"control plane running: {state['server']}")
            print(f"export KUBECONFIG={state['kubeconfig']}")
            return 0
        print("no control plane running" if state is None else "control plane partly down")
        return 1
    real_node = None
    if args.real_node:
        if args.cache is None:
            parser.error("--real-node needs --cache")
        real_node = RealNodeOptions(cache=args.cache.resolve(), egress=args.egress)
    try:
        state = ensure_up(
            workdir,
            nodes=args.nodes,
            real_node=real_node,
            progress=lambda line: print(line, flush=True),
        )
    except HarnessError as error:
        print(f"cluster-up failed: {error}", file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={state['kubeconfig']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
