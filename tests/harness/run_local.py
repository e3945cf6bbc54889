"""`make run`: the whole product on this machine, in one command.

1. A local cluster with a real node (harness/controlplane.py, harness/node.py): the control plane
   built from Go modules, containerd, the kubelet, kube-proxy, CoreDNS and a default StorageClass.
2. The images, built here from the Dockerfile and Debian packages, imported into the node
   (harness/images.py); cached by content, so a second run builds nothing.
3. The platform chart, the fake Anthropic API and the two example agents (harness/product.py).
   With ANTHROPIC_API_KEY set, the agents call the real API instead, under the budgets of
   examples/local/ (at most $2 + $1 a day).
4. The example team run, shown step by step, then its output, tokens and cost.

Everything keeps running afterwards; the last lines say how to use it and how to stop it.

    cd tests && python -m harness.run_local --dir DIR --cache DIR
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from harness.binaries import REPO, tools_dir
from harness.controlplane import RealNodeOptions, ensure_up
from harness.node import unmet_requirements
from harness.processes import HarnessError
from harness.product import AGENTS, NAMESPACE, Product, install

TEAM = REPO / "examples" / "team.yaml"
RUN = REPO / "examples" / "run.yaml"
RUN_TIMEOUT = 600.0
ENDED = ("Succeeded", "Failed", "Cancelled")


def say(line: str) -> None:
    print(line, flush=True)


def start_team_run(product: Product) -> str:
    product.kubectl("apply", "-f", str(TEAM))
    created = product.kubectl("create", "-f", str(RUN), "-o", "name")
    return created.strip().split("/", 1)[1]


def watch_run(product: Product, name: str) -> dict[str, Any]:
    """Print each step's phase as it changes until the run ends; the run's last state."""
    shown: dict[str, str] = {}
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        run = product.json("get", "agentrun", name)
        status = run.get("status") or {}
        for step, state in (status.get("steps") or {}).items():
            phase = state.get("phase", "")
            if shown.get(step) != phase:
                shown[step] = phase
                detail = f" ({state['message']})" if state.get("message") else ""
                cost = f", {state['cost']}" if state.get("cost") else ""
                say(f"  step {step:<10} {phase}{cost}{detail}")
        if status.get("phase") in ENDED:
            ended: dict[str, Any] = run
            return ended
        if time.monotonic() > deadline:
            raise HarnessError(f"the run {name} did not end within {RUN_TIMEOUT:.0f}s")
        time.sleep(1)  # a human-paced display, not a synchronisation


def next_commands(kubeconfig: str, run: str) -> str:
    research = AGENTS[0]
    return f"""
Everything keeps running. Next:

  export KUBECONFIG={kubeconfig} PATH={tools_dir()}:$PATH
  kubectl -n {NAMESPACE} get pods
  kubectl -n {NAMESPACE} get agentruns -w                 # in another terminal, then:
  kubectl -n {NAMESPACE} create -f examples/run.yaml
  kubectl -n {NAMESPACE} get agentrun {run} -o jsonpath='{{.status.output}}'

  # ship a prompt change (the pods roll, gated by the semantic probe), then undo it:
  echo 'You are a terse research assistant.' > prompt.txt
  helm -n {NAMESPACE} upgrade {research.release} charts/agent --reuse-values \\
    --set-file systemPrompt=prompt.txt --wait
  helm -n {NAMESPACE} rollback {research.release} --wait

  make cluster-down                                       # stop it all
"""


def machine_can_run_a_node() -> bool:
    """Say exactly why not, and what still works, when this machine cannot run a real node."""
    problems = unmet_requirements()
    if problems:
        print("make run needs a real node, and this machine cannot run one:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        print("`make cluster-up` (kwok nodes only) and `make test` still work.", file=sys.stderr)
    return not problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only check that this machine can run a real node"
    )
    parser.add_argument("--dir", type=Path, help="the cluster's work folder")
    parser.add_argument("--cache", type=Path, help="the image cache folder")
    args = parser.parse_args()
    if not machine_can_run_a_node():
        return 2
    if args.check:
        return 0
    if args.dir is None or args.cache is None:
        parser.error("--dir and --cache are required")
    api_key = os.environ.get("ANTHROPIC_API_KEY") or None
    began = time.monotonic()
    try:
        say("[1/4] local cluster with a real node (first run: builds and images take minutes)")
        state = ensure_up(
            args.dir.resolve(),
            nodes=0,
            real_node=RealNodeOptions(cache=args.cache.resolve(), egress=api_key is not None),
            progress=lambda line: say(f"  {line}"),
        )
        product = Product(Path(state["kubeconfig"]))
        upstream = "the real Anthropic API (ANTHROPIC_API_KEY)" if api_key else "the fake upstream"
        say(f"[2/4] platform and example agents, calling {upstream}")
        install(product, api_key=api_key, progress=lambda line: say(f"  {line}"))
        say("[3/4] the example team run (examples/team.yaml, examples/run.yaml)")
        name = start_team_run(product)
        say(f"  agentrun/{name} created")
        run = watch_run(product, name)
        status = run["status"]
        say(f"[4/4] {name}: {status['phase']} in {time.monotonic() - began:.0f}s since start")
        usage = status.get("usage") or {}
        say(f"  tokens {usage.get('tokens', 0)}, cost {usage.get('cost', '$0')}")
        if status.get("output"):
            say("  output:\n" + "\n".join(f"    {line}" for line in status["output"].splitlines()))
        elif status.get("message"):
            say(f"  message: {status['message']}")
        say(next_commands(state["kubeconfig"], name))
        return 0 if status["phase"] == "Succeeded" else 1
    except HarnessError as error:
        print(f"make run failed: {error}", file=sys.stderr)
        print(f"logs: {args.dir.resolve() / 'logs'}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
