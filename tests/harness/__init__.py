"""Test harness: starts the real parts (redis-server, helm, kubectl, the fake Anthropic API).

Every later capability's tests reuse these modules through the fixtures in `tests/conftest.py`.
"""
