"""kubeagents operator: team runs (`AgentTeam`, `AgentRun`) driven over the agents' task queues.

The pure parts come first: `dag` (the steps' graph), `templates` (prompt templates) and
`outputs` (a step's JSON output and its schema). The kopf handlers stay thin around them.
"""
