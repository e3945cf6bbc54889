"""The semantic-probe sidecar: Ready means the model path really answers correctly.

It asks the model a validator question through the pod's proxy on its own schedule (once per
interval per agent, shared through Redis), judges the reply, checks the token-free parts of the
path (proxy, key, budget, MCP servers), and answers the kubelet's and the runtime's `/readyz`
from memory.
"""
