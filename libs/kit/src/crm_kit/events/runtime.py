"""The bus as the service skeleton (`crm_kit.service`) starts it: settings from the environment, the service's
own database, its name as the stream it produces into. Consumers are added after the service's build step with
`bus.start_consumers(...)`."""

from __future__ import annotations

from typing import Any

from crm_kit.events.bus import EventBus
from crm_kit.events.config import EventSettings


async def start_bus(runtime: Any, service: str, *, settings: EventSettings | None = None) -> EventBus:
    """Start the bus for `runtime` (anything with `.settings` — a `ServiceSettings` — and `.db`)."""
    bus = EventBus(
        service=service,
        database=runtime.db,
        nats_url=runtime.settings.nats_servers(),
        settings=settings or EventSettings(),
        connect_options=runtime.settings.nats_options(),
    )
    return await bus.start()
