"""OpenTelemetry traces and metrics, configured by the standard OTEL_* variables and off by default locally.

A tracer provider is always installed, so trace ids exist for logs and travel in gRPC metadata and NATS
headers; spans are exported only when OTEL_EXPORTER_OTLP_ENDPOINT (or *_TRACES_ENDPOINT) is set and
OTEL_TRACES_EXPORTER is not "none".
"""

from __future__ import annotations

import os

from opentelemetry import metrics, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider

_configured = False


def _exporting(signal: str) -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if os.environ.get(f"OTEL_{signal}_EXPORTER", "otlp").lower() == "none":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    )


def tracing_enabled() -> bool:
    """Whether spans leave the process. When they do not, the kit installs no tracing interceptors at all:
    spans nobody exports would cost every call for nothing (request ids still correlate the logs)."""
    return _exporting("TRACES")


def metrics_enabled() -> bool:
    return _exporting("METRICS")


def setup_telemetry(service: str) -> None:
    global _configured
    if _configured:
        return
    _configured = True
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", f"crm-{service}")})
    provider = TracerProvider(resource=resource)
    if _exporting("TRACES"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    if _exporting("METRICS"):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        metrics.set_meter_provider(
            MeterProvider(
                resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]
            )
        )


def shutdown_telemetry() -> None:
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def counter(name: str, description: str, unit: str = "1") -> metrics.Counter:
    """A counter of the kit's meter, for what operators must see (dead letters, parked events). Exported with
    the other metrics when OTEL_* says so; created before `setup_telemetry` it still reaches its provider."""
    return metrics.get_meter("crm_kit").create_counter(name, unit=unit, description=description)
