"""The network of a real local node: its own network namespace, joined to the host by a veth pair.

The node's containerd, kubelet and kube-proxy run inside the namespace, so the pod bridge, the
pods' routes and kube-proxy's iptables rules stay out of the host's tables, and two local clusters
(`make run`'s and the test suite's) can run side by side. Each node takes a free slot N:

    host  kubeagents-hN  172.30.N.1/24   the API server listens here (pods reach it through it)
    node  kubeagents-nN  172.30.N.2/24   the kubelet's address, the node's InternalIP

Pods get 10.244.0.0/16 from the CNI bridge inside the namespace; the bridge masquerades what
leaves it, so the host only ever sees the node's address. Nothing is routed beyond the host unless
`egress` is asked for (the real Anthropic API in `make run`), which masquerades the node's subnet
on the host.
"""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass

from harness.processes import HarnessError

SLOTS = 16
NETNS_PREFIX = "kubeagents-node-"


@dataclass(frozen=True)
class NodeNetwork:
    slot: int

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.slot}"

    @property
    def host_ip(self) -> str:
        return f"172.30.{self.slot}.1"

    @property
    def node_ip(self) -> str:
        return f"172.30.{self.slot}.2"

    @property
    def subnet(self) -> str:
        return f"172.30.{self.slot}.0/24"

    @property
    def host_link(self) -> str:
        return f"kubeagents-h{self.slot}"

    @property
    def node_link(self) -> str:
        return f"kubeagents-n{self.slot}"

    def exec_prefix(self) -> list[str]:
        """The argv prefix that runs a program inside the node's network namespace.

        nsenter, not `ip netns exec`: the latter also makes a mount namespace with a new /sys,
        which hides the cgroup mounts from the kubelet and containerd."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--"]

    def run(self, *argv: str) -> str:
        """Run a command inside the node's namespace; its output."""
        return _run(*self.exec_prefix(), *argv)


def _run(*argv: str, check: bool = True) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if check and result.returncode != 0:
        raise HarnessError(f"`{' '.join(argv)}` failed: {result.stderr.strip()}")
    return result.stdout


def existing_namespaces() -> set[str]:
    return {line.split()[0] for line in _run("ip", "netns", "list").splitlines() if line.strip()}


def create_network(*, egress: bool = False) -> NodeNetwork:
    """Take the first free slot (`ip netns add` fails when another cluster holds it) and wire it."""
    for slot in range(SLOTS):
        network = NodeNetwork(slot)
        if network.netns in existing_namespaces():
            continue
        if subprocess.run(["ip", "netns", "add", network.netns], capture_output=True).returncode:
            continue  # taken by a concurrent start between the listing and the add
        try:
            _wire(network, egress=egress)
        except BaseException:
            delete_network(network)
            raise
        return network
    raise HarnessError(
        f"all {SLOTS} node network slots are taken (ip netns list | grep {NETNS_PREFIX}): "
        "stop other local clusters with `make cluster-down`"
    )


def _wire(network: NodeNetwork, *, egress: bool) -> None:
    host, node = network.host_link, network.node_link
    with contextlib.suppress(HarnessError):  # a link left by a cluster that was killed
        _run("ip", "link", "delete", host)
    _run("ip", "link", "add", host, "type", "veth", "peer", "name", node)
    _run("ip", "link", "set", node, "netns", network.netns)
    _run("ip", "addr", "add", f"{network.host_ip}/24", "dev", host)
    _run("ip", "link", "set", host, "up")
    network.run("ip", "link", "set", "lo", "up")
    network.run("ip", "addr", "add", f"{network.node_ip}/24", "dev", node)
    network.run("ip", "link", "set", node, "up")
    network.run("ip", "route", "add", "default", "via", network.host_ip)
    # Pod traffic is forwarded by the node, and bridged pod traffic passes iptables, so Services
    # work between pods on the same bridge (kube-proxy's requirements).
    network.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    network.run("sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1")
    if egress:
        _run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        _run(*_masquerade_rule("-A", network))


def _masquerade_rule(action: str, network: NodeNetwork) -> list[str]:
    return [
        "iptables", "-t", "nat", action, "POSTROUTING", "-s", network.subnet,
        "!", "-o", network.host_link, "-j", "MASQUERADE",
        "-m", "comment", "--comment", f"kubeagents node {network.slot} egress",
    ]  # fmt: skip


def delete_network(network: NodeNetwork) -> None:
    """Remove the namespace (its end of the veth pair goes with it) and the egress rule."""
    _run(*_masquerade_rule("-D", network), check=False)
    _run("ip", "netns", "delete", network.netns, check=False)
    _run("ip", "link", "delete", network.host_link, check=False)
