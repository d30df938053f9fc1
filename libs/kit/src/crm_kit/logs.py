"""JSON logs on stdout, each line carrying the service, trace id, request id and tenant of its call."""

from __future__ import annotations

import logging
import sys

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from crm_kit import context


class ContextFilter(logging.Filter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = context.current()
        span = trace.get_current_span().get_span_context()
        record.service = self.service
        record.trace_id = f"{span.trace_id:032x}" if span.is_valid else ctx.trace_id
        record.request_id = ctx.request_id
        record.tenant_id = ctx.principal.tenant_id if ctx.principal else ""
        return True


def setup_logging(service: str, *, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stdout)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(service)s %(trace_id)s %(request_id)s %(tenant_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(service)s %(name)s: %(message)s")
        )
    handler.addFilter(ContextFilter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("sqlalchemy.engine", "nats", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
