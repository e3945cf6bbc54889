"""The LLM proxy sidecar: the only holder of the API key and the only way out to the model.

It speaks Anthropic's Messages API on 127.0.0.1 and enforces, from its configuration only, the
model allow-list, per-call token caps, concurrency caps, timeouts, request rates and rolling
24-hour token and dollar budgets shared by every replica through Redis.
"""
