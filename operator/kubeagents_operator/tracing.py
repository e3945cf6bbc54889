"""A run's trace: an `invoke_workflow {team}` span, and a `step {name}` span per step attempt
under it, continued by the runtime (`invoke_agent`) and the proxy (`chat`).

A run outlives operator processes (a restart resumes it), so its spans cannot be held open in
memory. Their ids are derived instead: the trace id is the run's uid (128 bits), the span id of
the run and of each step attempt a hash of the uid and the name. A task's `traceparent` names
its step's span before that span is written; each span is written when it ends, with the start
time kept in the run's status, by whichever process ends it. Ids come from `DerivedIds`, the
tracer's id generator, for the span being written.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode

from kubeagents.telemetry import build_tracer

_NEXT: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "kubeagents_operator_next_ids", default=None
)
RUN_SPAN = "run"


class DerivedIds(IdGenerator):
    """Random ids, except for the span being written by `write_span`."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_trace_id(self) -> int:
        ids = _NEXT.get()
        return ids[0] if ids else self._random.generate_trace_id()

    def generate_span_id(self) -> int:
        ids = _NEXT.get()
        return ids[1] if ids else self._random.generate_span_id()

    def is_trace_id_random(self) -> bool:
        return True  # a uuid4's bits are random


def trace_id(run_uid: str) -> int:
    """The run's uid as a trace id (a uid that is not 128 hex bits: a hash of it)."""
    digits = run_uid.replace("-", "")
    if len(digits) == 32 and all(c in "0123456789abcdefABCDEF" for c in digits):
        return int(digits, 16) or 1
    return int.from_bytes(hashlib.sha256(run_uid.encode()).digest()[:16], "big") or 1


def span_id(run_uid: str, name: str) -> int:
    digest = hashlib.sha256(f"{run_uid}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


def step_span_name(step: str, attempt: int) -> str:
    return f"{step}.{attempt}"


def traceparent(run_uid: str, step: str, attempt: int) -> str:
    """The `traceparent` of a step attempt's task: its span, in the run's trace."""
    span = span_id(run_uid, step_span_name(step, attempt))
    return f"00-{trace_id(run_uid):032x}-{span:016x}-01"


class RunTracer:
    def __init__(self, tracer: trace.Tracer | None = None) -> None:
        self.tracer = tracer or build_tracer(
            "kubeagents-operator", "kubeagents.operator", id_generator=DerivedIds()
        )

    def write_span(
        self,
        run_uid: str,
        *,
        name: str,
        span: str,
        parent: str | None,
        start_ns: int,
        end_ns: int,
        attributes: Mapping[str, Any],
        error: str = "",
    ) -> None:
        """Write one finished span of the run: `span` names its id, `parent` its parent's (None:
        the run's root span)."""
        if isinstance(self.tracer, trace.NoOpTracer):
            return
        context = None
        if parent is not None:
            parent_context = SpanContext(
                trace_id=trace_id(run_uid),
                span_id=span_id(run_uid, parent),
                is_remote=True,
                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
            )
            context = trace.set_span_in_context(NonRecordingSpan(parent_context))
        with _ids(trace_id(run_uid), span_id(run_uid, span)):
            written = self.tracer.start_span(
                name,
                context=context,
                kind=SpanKind.INTERNAL,
                attributes=dict(attributes),
                start_time=start_ns,
            )
        if error:
            written.set_status(Status(StatusCode.ERROR, error))
        written.end(end_time=end_ns)


@contextlib.contextmanager
def _ids(trace: int, span: int) -> Iterator[None]:
    token = _NEXT.set((trace, span))
    try:
        yield
    finally:
        _NEXT.reset(token)
