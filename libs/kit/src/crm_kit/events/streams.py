"""JetStream streams, created or updated at start-up by every service, so there is no separate setup step.

One stream per producing service (`CRM_IDENTITY` holds `crm.identity.>`) plus one dead-letter stream. A service
ensures the streams it produces into and the ones its consumers read from, so start-up order between services
does not matter. Creating a stream that exists with the same configuration is a no-op in JetStream; with a
different one (a changed retention, say) the kit updates it, so the configuration lives here, in code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from crm_kit.events.config import EventSettings
from crm_kit.events.subjects import (
    dead_letter_stream,
    dead_letter_stream_subjects,
    stream_for_context,
    stream_subjects,
)

log = logging.getLogger("crm.events")

# JetStream's "stream name already in use with a different configuration".
_STREAM_NAME_IN_USE = 10058


def stream_config(context: str, settings: EventSettings) -> StreamConfig:
    return StreamConfig(
        name=stream_for_context(context, settings.namespace),
        description=f"Events of the {context} service",
        subjects=stream_subjects(context, settings.namespace),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=settings.stream_max_age,
        duplicate_window=settings.duplicate_window,
        num_replicas=settings.stream_replicas,
    )


def dead_letter_config(settings: EventSettings) -> StreamConfig:
    return StreamConfig(
        name=dead_letter_stream(settings.namespace),
        description="Events a consumer gave up on, with the error in the Crm-Error header",
        subjects=dead_letter_stream_subjects(settings.namespace),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=settings.dead_letter_max_age,
        duplicate_window=settings.duplicate_window,
        num_replicas=settings.stream_replicas,
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise
        log.info("updating stream %s to the kit's configuration", config.name)
        await js.update_stream(config)


async def ensure_streams(js: JetStreamContext, contexts: Iterable[str], settings: EventSettings) -> list[str]:
    """Create or update the streams of `contexts` (e.g. ["identity"]) and the dead-letter stream; idempotent."""
    configs = [stream_config(c, settings) for c in sorted(set(contexts))] + [dead_letter_config(settings)]
    for config in configs:
        await ensure_stream(js, config)
    return [c.name for c in configs if c.name]
