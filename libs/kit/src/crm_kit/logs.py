"""JSON logs on stdout, each line carrying the service, trace id, request id and tenant of its call.

Every log record, whoever handles it, is made safe when it is created (`scrub_exceptions`): an exception in
it, as `exc_info` (`log.exception(...)`) or as an argument (`log.warning("failed: %s", exc)`), is written by
`crm_kit.errors.describe`, so a database error never brings its statement parameters or the values its DETAIL
line echoes (personal data) into a log.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from crm_kit import context
from crm_kit.errors import describe, format_exception


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


class _SafeRecordFactory:
    """Wraps the record factory: exceptions in a record are replaced by their safe description."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.inner(*args, **kwargs)
        try:
            scrub(record)
        except Exception:  # an exception whose text cannot be had: its type, and the log line still written
            exc = record.exc_info[1] if record.exc_info else None
            record.exc_text, record.exc_info = (type(exc).__name__ if exc else None), None
            if isinstance(record.args, tuple):
                record.args = tuple(
                    type(a).__name__ if isinstance(a, BaseException) else a for a in record.args
                )
        return record


def scrub(record: logging.LogRecord) -> None:
    """Make one record safe: its traceback as `crm_kit.errors.format_exception` writes it (in `exc_text`, which
    every formatter prints, `exc_info` cleared so none formats the raw one), exceptions among its arguments or
    as its message by `describe`."""
    if record.exc_info and record.exc_info[1] is not None:
        record.exc_text = format_exception(record.exc_info[1])
        record.exc_info = None
    if isinstance(record.msg, BaseException):
        record.msg = describe(record.msg)
    if isinstance(record.args, tuple) and any(isinstance(a, BaseException) for a in record.args):
        record.args = tuple(describe(a) if isinstance(a, BaseException) else a for a in record.args)
    elif isinstance(record.args, dict) and any(isinstance(a, BaseException) for a in record.args.values()):
        record.args = {k: describe(a) if isinstance(a, BaseException) else a for k, a in record.args.items()}


def scrub_exceptions() -> None:
    """Install the safe record factory for the whole process (once; services do it when they start)."""
    current = logging.getLogRecordFactory()
    if not isinstance(current, _SafeRecordFactory):
        logging.setLogRecordFactory(_SafeRecordFactory(current))


def scrubbing() -> bool:
    return isinstance(logging.getLogRecordFactory(), _SafeRecordFactory)


def setup_logging(service: str, *, level: str = "INFO", fmt: str = "json") -> None:
    scrub_exceptions()
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
