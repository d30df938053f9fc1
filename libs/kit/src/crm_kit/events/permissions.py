"""What each service may publish and subscribe to on NATS, derived from the same names the kit uses
(`crm_kit.events.subjects`), so the NATS server's permissions and the code cannot drift apart.

    nats_permissions("customers", consumes=["sales"], follows=["crm.identity.v1.>"])

A service publishes only its own events (`crm.<service>.>`, through its relay) and its own dead letters
(`dlq.<service>.>`). It subscribes only to its reply inboxes (`_INBOX.<service>.>`, see `inbox_prefix`), to the
subjects it follows on plain subscriptions (cache invalidation) and to the max-deliveries advisories of the
streams its consumers read. The JetStream API is allowed per stream: create/update/info of the streams it
ensures (its own, those its consumers read, the dead-letter stream), and consumers, pulls, acks and message
reads only on the streams its consumers read. So a service can neither forge another service's events nor
read a stream it has no consumer on; the dead-letter stream is read by operators only
(`python -m crm_kit.events.dead_letters` with an operator's NATS user).

The Helm chart renders the same lists from `services.<name>.events` (charts/crm/templates/_helpers.tpl,
"crm.natsPermissions"); deploy/check.py compares its rendering with this function for every service.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from crm_kit.events.subjects import (
    dead_letter_stream,
    inbox_prefix,
    namespaced,
    stream_for_context,
    stream_subjects,
)

JS_API = "$JS.API"


@dataclass(frozen=True)
class NatsPermissions:
    publish: list[str]
    subscribe: list[str]


def nats_permissions(
    service: str,
    *,
    produces: bool = True,
    consumes: Iterable[str] = (),
    follows: Iterable[str] = (),
    namespace: str = "",
) -> NatsPermissions:
    """The allow lists of `service`'s NATS user. `consumes`: the contexts whose streams its durable consumers
    read; `follows`: the subjects (without namespace) it follows on plain subscriptions. An empty `publish`
    means nothing may be published (the NATS config then says `deny: [">"]`)."""
    consumed = [stream_for_context(c, namespace) for c in sorted(set(consumes))]
    own = [stream_for_context(service, namespace)] if produces else []
    ensured = list(dict.fromkeys(own + consumed))
    publish: list[str] = []
    if produces:
        publish += stream_subjects(service, namespace)
        publish.append(namespaced(f"dlq.{service}.>", namespace))
    if ensured:
        publish.append(f"{JS_API}.INFO")
    for stream in [*ensured, dead_letter_stream(namespace)] if ensured else []:
        publish += [f"{JS_API}.STREAM.{op}.{stream}" for op in ("CREATE", "UPDATE", "INFO")]
    for stream in consumed:
        publish += [
            f"{JS_API}.CONSUMER.CREATE.{stream}.>",
            f"{JS_API}.CONSUMER.DURABLE.CREATE.{stream}.>",
            f"{JS_API}.CONSUMER.INFO.{stream}.>",
            f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.>",
            f"{JS_API}.STREAM.MSG.GET.{stream}",
            f"$JS.ACK.{stream}.>",
        ]
    subscribe = [f"{inbox_prefix(service)}.>"]
    subscribe += [namespaced(s, namespace) for s in sorted(set(follows))]
    subscribe += [f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.>" for stream in consumed]
    return NatsPermissions(publish=publish, subscribe=subscribe)
