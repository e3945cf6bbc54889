"""The HTTP headers the pod's processes exchange on top of Anthropic's API (docs/architecture.md).

- `kubeagents-run-budget: run=<id>; step=<step>; tokens=<n>; usd=<x>`: a team run's budget
  scope (and the step's, metered apart without limits); the runtime sends it with every model
  call of a run's task, the proxy meters the call against it.
- `kubeagents-budget-scope: agent|run`: on a proxy's budget 429, whose budget ran out.
- `kubeagents-probe: 1`: the call is the semantic probe's.
"""

RUN_BUDGET_HEADER = "kubeagents-run-budget"
BUDGET_SCOPE_HEADER = "kubeagents-budget-scope"
PROBE_CALL_HEADER = "kubeagents-probe"
