"""The agent runtime: a queue worker that loses nothing, a tool-use loop with MCP tools through
the pod's proxy, and tasks that resume from their last checkpoint after a crash.

It reads its configuration from environment variables and mounted files only and knows nothing
of Kubernetes, so the same process runs on a laptop.
"""
