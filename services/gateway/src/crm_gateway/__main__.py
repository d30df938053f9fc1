"""`python -m crm_gateway [serve|migrate]`: serve the public API with uvicorn (uvloop + httptools), or run the
migrations of the gateway's database (what the Helm chart's migration Job runs).

On SIGTERM uvicorn stops accepting connections and lets requests in flight finish for up to
CRM_SHUTDOWN_GRACE_SECONDS, then the lifespan closes the gRPC channels and the NATS connection.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from types import FrameType

import uvicorn
from crm_kit.logs import setup_logging
from crm_kit.telemetry import setup_telemetry, shutdown_telemetry

from crm_gateway.app import create_app
from crm_gateway.settings import GatewaySettings
from crm_gateway.store import migrate

log = logging.getLogger("crm.gateway")


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="crm_gateway")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    settings = GatewaySettings()
    setup_logging("gateway", level=settings.log_level, fmt=settings.log_format)
    if args.command == "migrate":
        asyncio.run(migrate(settings.database_url))
        log.info("gateway migrated")
        return
    setup_telemetry("gateway")
    app = create_app(settings)  # FastAPI traces its requests itself when an exporter is configured
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,  # the kit's JSON logging is already on the root logger
        access_log=False,  # the gateway writes its own access line, with the request id
        # X-Forwarded-* are read by the gateway itself, from its trusted proxies only (crm_gateway.clientip).
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )
    log.info("gateway listening on %s:%s", settings.http_host, settings.http_port)
    # Once it has drained, uvicorn raises the signal it caught again for whatever handler was there before it.
    # With the default one the process dies of SIGTERM right there, before `finally` flushes the last spans;
    # with this one it exits 0 through `finally`, as the services do.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    try:
        uvicorn.Server(config).run()
    finally:
        shutdown_telemetry()


if __name__ == "__main__":
    main()
