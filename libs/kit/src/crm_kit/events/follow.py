"""Following events on a plain NATS subscription, for what every replica must see at once.

A durable `Consumer` hands each event to one replica, exactly once in effect: right for work. Dropping a cached
value is the opposite: every replica of every service holding the cache must hear of it, and missing one
event only means the cache lives out its normal lifetime. So caches follow events on a plain subscription.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crm.common.v1 import event_pb2

from crm_kit.events.subjects import namespaced


async def follow(
    nc: Any, subject: str, on_event: Callable[[event_pb2.EventEnvelope], None], namespace: str = ""
) -> Any:
    """Subscribe to `subject` (e.g. "crm.identity.v1.>") and hand each event's envelope to `on_event`, which
    must be quick and must not raise. Returns the subscription."""

    async def on_message(msg: Any) -> None:
        envelope = event_pb2.EventEnvelope()
        try:
            envelope.ParseFromString(msg.data)
        except Exception:  # a foreign message on the subject is not ours to judge
            return
        on_event(envelope)

    return await nc.subscribe(namespaced(subject, namespace), cb=on_message)
