"""OpenTelemetry tracing for every process, configured only by the standard `OTEL_*` variables.

Tracing is on when `OTEL_TRACES_EXPORTER` is `otlp` or `console`, or when an OTLP endpoint is
set (`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); otherwise the tracer
is a no-op and costs nothing on the hot path. The service name comes from `OTEL_SERVICE_NAME`
(default: the process's), the sampler from `OTEL_TRACES_SAMPLER`, resource attributes from
`OTEL_RESOURCE_ATTRIBUTES` — all read by the SDK itself.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.id_generator import IdGenerator

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def tracing_requested() -> bool:
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none" or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return exporter in ("otlp", "console") or any(os.environ.get(v) for v in ENDPOINT_VARIABLES)


def build_tracer(
    default_service_name: str, instrumentation: str, *, id_generator: IdGenerator | None = None
) -> trace.Tracer:
    """A tracer exporting as the `OTEL_*` variables say, or a no-op tracer. `id_generator`
    replaces the SDK's random trace and span ids (the operator derives a run's from its uid)."""
    if not tracing_requested():
        return trace.NoOpTracer()
    service = os.environ.get("OTEL_SERVICE_NAME") or default_service_name
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}), id_generator=id_generator
    )
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider.get_tracer(instrumentation)
