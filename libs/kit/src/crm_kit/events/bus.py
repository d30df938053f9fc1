"""The event bus a service starts and stops: one NATS connection, its streams, its outbox relay, its consumers.

    bus = EventBus(service="notifications", database=db, nats_url=settings.nats_url, consumers=CONSUMERS)
    await bus.start()      # connect (bounded retries), ensure streams, start the relay and the consumers
    ...
    await bus.stop()       # consumers finish the event in hand; the relay its batch; then the connection drains

Start-up is strict and running is forgiving: a NATS that cannot be reached at start is an error after a few
attempts (a misconfigured URL should fail the rollout, not hang it), while a NATS that goes away later is
reconnected to forever, the relay keeping events in the outbox meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS
from opentelemetry.trace import TracerProvider

from crm_kit.db import Database
from crm_kit.events.config import EventSettings
from crm_kit.events.consumer import Consumer, ConsumerRunner
from crm_kit.events.relay import OutboxRelay
from crm_kit.events.streams import ensure_streams

log = logging.getLogger("crm.events")


async def connect_nats(
    servers: str | list[str],
    settings: EventSettings,
    *,
    name: str,
    reconnected: Callable[[], None] | None = None,
    options: Mapping[str, Any] | None = None,
) -> NATS:
    """Connect with `connect_attempts` tries at start-up, then reconnect forever once connected. `options` are
    the service's credentials, TLS and inbox prefix (`ServiceSettings.nats_options()`)."""

    async def on_error(exc: Exception) -> None:
        log.warning("NATS: %s", exc or type(exc).__name__)

    async def on_disconnected() -> None:
        log.warning("NATS disconnected; reconnecting")

    async def on_reconnected() -> None:
        log.info("NATS reconnected to %s", nc.connected_url.netloc if nc.connected_url else "?")
        if reconnected is not None:
            reconnected()

    nc = await nats.connect(
        servers=servers,
        name=name,
        connect_timeout=settings.connect_timeout,
        reconnect_time_wait=settings.reconnect_wait,
        max_reconnect_attempts=max(1, settings.connect_attempts),
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        **dict(options or {}),
    )
    # nats-py reads this option on every reconnect: bounded at start-up, unbounded from now on.
    nc.options["max_reconnect_attempts"] = -1
    return nc


def check_max_payload(nc: NATS) -> None:
    """Refuse to run against a NATS server that cannot carry the largest event a unit of work may emit
    (`crm_kit.events.outbox.MAX_EVENT_BYTES`) and its headers: a deployment error, surfaced at start-up."""
    from crm_kit.events.outbox import HEADER_ALLOWANCE, MAX_EVENT_BYTES

    if nc.max_payload < MAX_EVENT_BYTES + HEADER_ALLOWANCE:
        raise RuntimeError(
            f"NATS max_payload is {nc.max_payload} bytes; events may be up to {MAX_EVENT_BYTES} bytes plus "
            f"{HEADER_ALLOWANCE} of headers: raise max_payload on the server"
        )


class EventBus:
    """What a service runs for events. `produces` names the contexts whose streams it publishes into (default:
    the service's own name); the streams of its consumers are ensured too, so start-up order does not matter."""

    def __init__(
        self,
        *,
        service: str,
        database: Database | None,
        nats_url: str | list[str],
        settings: EventSettings | None = None,
        consumers: Sequence[Consumer] = (),
        produces: Sequence[str] | None = None,
        relay: bool = True,
        tracer_provider: TracerProvider | None = None,
        connect_options: Mapping[str, Any] | None = None,
    ):
        self.service = service
        self.database = database
        self.nats_url = nats_url
        self.settings = settings or EventSettings()
        self.consumers = list(consumers)
        self.produces = list(produces) if produces is not None else [service]
        self.run_relay = relay and database is not None
        self.tracer_provider = tracer_provider
        self.connect_options = dict(connect_options or {})
        self.nc: NATS | None = None
        self.relay: OutboxRelay | None = None
        self.runners: dict[str, ConsumerRunner] = {}
        self._ensured: set[str] = set()

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    async def start(self) -> EventBus:
        self.nc = await connect_nats(
            self.nats_url,
            self.settings,
            name=f"crm-{self.service}",
            reconnected=self._reconnected,
            options=self.connect_options,
        )
        try:
            check_max_payload(self.nc)
            await self._ensure(self.produces)
            if self.run_relay:
                assert self.database is not None
                self.relay = OutboxRelay(
                    self.database, self.nc, self.settings, name=f"crm-{self.service}-relay"
                )
                await self.relay.start()
            await self.start_consumers(self.consumers)
        except BaseException:
            await self.stop()
            raise
        return self

    async def start_consumers(self, consumers: Iterable[Consumer]) -> None:
        """Start consumers declared after `start()` (e.g. by a service's build step)."""
        consumers = [c for c in consumers if c.name not in self.runners]
        if not consumers:
            return
        if self.nc is None or self.database is None:
            raise RuntimeError("start the bus, with a database, before its consumers")
        names = [c.name for c in consumers]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate consumer names: {names}")
        await self._ensure(c.context for c in consumers)
        for consumer in consumers:
            runner = ConsumerRunner(
                consumer,
                database=self.database,
                nc=self.nc,
                service=self.service,
                settings=self.settings,
                tracer_provider=self.tracer_provider,
            )
            await runner.start()
            self.runners[consumer.name] = runner
            if consumer not in self.consumers:
                self.consumers.append(consumer)

    def _reconnected(self) -> None:
        """Pull requests die with a NATS restart and the relay may be in a long backoff: resume both now."""
        for runner in self.runners.values():
            runner.pull_again()
        if self.relay is not None:
            self.relay.retry_now()

    async def _ensure(self, contexts: Iterable[str]) -> None:
        missing = set(contexts) - self._ensured
        if missing and self.nc is not None:
            await ensure_streams(self.nc.jetstream(), missing, self.settings)
            self._ensured |= missing

    async def stop(self) -> None:
        """Consumers finish their event in hand and stop pulling; the relay finishes its batch; NATS drains."""
        await asyncio.gather(*(r.stop() for r in self.runners.values()), return_exceptions=True)
        self.runners.clear()
        if self.relay is not None:
            await self.relay.stop()
            self.relay = None
        if self.nc is not None:
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError, OSError):
                await asyncio.wait_for(self.nc.drain(), timeout=5)
            if not self.nc.is_closed:
                await self.nc.close()
            self.nc = None

    async def __aenter__(self) -> EventBus:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()
