"""Dead letters: see what a consumer gave up on, send it back once the cause is fixed, or discard it.

A consumer dead-letters an event it could not handle (`crm_kit.events.consumer`): the envelope goes to
`dlq.<service>.<consumer>` in the stream CRM_DEAD_LETTERS, with the error, the original subject and sequence in
headers. Nothing is lost there, but nothing happens to it either, until an operator looks:

    python -m crm_kit.events.dead_letters list [--consumer customers/sales-timeline]
    python -m crm_kit.events.dead_letters replay 17 18        # or: replay --all [--consumer …]
    python -m crm_kit.events.dead_letters discard 19

(`kubectl exec deploy/crm-customers -- python -m crm_kit.events.dead_letters list` in a cluster; the NATS URL
and namespace come from CRM_NATS_URL and CRM_EVENTS_NAMESPACE, as for the services.)

Replay publishes the envelope again on its original subject, then removes the dead letter. Every consumer of
that subject receives it; those that handled it before find it in their inbox and do nothing, so only the
consumer that failed has an effect, once. The replay has a Msg-Id of its own (JetStream would drop a copy of
the original id within its duplicate window) and says what it replays in `Crm-Replay-Of`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import asdict, dataclass

import nats
from crm.common.v1 import event_pb2
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ServerError

from crm_kit.events.consumer import (
    ALERT_HEADER,
    CONSUMER_HEADER,
    DELIVERIES_HEADER,
    ERROR_HEADER,
    ERROR_TYPE_HEADER,
    ORIGINAL_SUBJECT_HEADER,
)
from crm_kit.events.subjects import dead_letter_stream, namespaced

REPLAY_OF_HEADER = "Crm-Replay-Of"
NO_MESSAGE = 10057  # JetStream's error code for "no message found"


class NoSuchDeadLetter(LookupError):
    """Not in the dead-letter stream (never was, or replayed or discarded already)."""


@dataclass(frozen=True)
class DeadLetter:
    seq: int  # in the dead-letter stream: what replay and discard take
    consumer: str  # "<service>/<consumer>"
    error: str
    error_type: str
    deliveries: int
    original_subject: str
    event_id: str
    event_type: str
    tenant_id: str
    aggregate: str
    alert: str = ""  # the consumer's alert marker ("audit_gap": an event the audit trail could not store)


def _letter(seq: int, headers: dict[str, str], data: bytes) -> DeadLetter:
    envelope = event_pb2.EventEnvelope()
    try:
        envelope.ParseFromString(data)
    except Exception:  # an undecodable event is dead-lettered too: show what there is
        envelope = event_pb2.EventEnvelope()
    return DeadLetter(
        seq=seq,
        consumer=headers.get(CONSUMER_HEADER, ""),
        error=headers.get(ERROR_HEADER, ""),
        error_type=headers.get(ERROR_TYPE_HEADER, ""),
        deliveries=int(headers.get(DELIVERIES_HEADER, "0") or 0),
        original_subject=headers.get(ORIGINAL_SUBJECT_HEADER, ""),
        event_id=envelope.id,
        event_type=envelope.type,
        tenant_id=envelope.tenant_id,
        aggregate=f"{envelope.aggregate_type}/{envelope.aggregate_id}" if envelope.aggregate_id else "",
        alert=headers.get(ALERT_HEADER, ""),
    )


def _subject(consumer: str, namespace: str) -> str:
    """`customers/sales-timeline` → that consumer's dead-letter subject; "" → all of them."""
    if not consumer:
        return namespaced("dlq.>", namespace)
    service, _, name = consumer.partition("/")
    return namespaced(f"dlq.{service}.{name}" if name else f"dlq.{service}.>", namespace)


async def list_letters(
    js: JetStreamContext, *, namespace: str = "", consumer: str = "", limit: int = 1000
) -> list[DeadLetter]:
    """The dead letters waiting, oldest first: of one consumer ("service/name"), one service, or all."""
    stream, subject = dead_letter_stream(namespace), _subject(consumer, namespace)
    out: list[DeadLetter] = []
    seq = 1
    while len(out) < limit:
        try:
            msg = await js.get_msg(stream, seq, subject=subject, next=True)
        except NotFoundError:
            break
        assert msg.seq is not None
        out.append(_letter(msg.seq, dict(msg.headers or {}), msg.data or b""))
        seq = msg.seq + 1
    return out


async def replay(js: JetStreamContext, seq: int, *, namespace: str = "") -> DeadLetter:
    """Publish dead letter `seq` again on its original subject, then remove it. Raises NoSuchDeadLetter when
    there is no such dead letter (replayed or discarded already)."""
    stream = dead_letter_stream(namespace)
    try:
        msg = await js.get_msg(stream, seq)
    except NotFoundError:
        raise NoSuchDeadLetter(f"no dead letter {seq}") from None
    headers = dict(msg.headers or {})
    letter = _letter(seq, headers, msg.data or b"")
    if not letter.original_subject:
        raise ValueError(f"dead letter {seq} does not say where it came from")
    replay_headers = {"Nats-Msg-Id": f"replay:{stream}:{seq}", REPLAY_OF_HEADER: f"{stream}:{seq}"}
    if "traceparent" in headers:
        replay_headers["traceparent"] = headers["traceparent"]
    await js.publish(letter.original_subject, msg.data or b"", headers=replay_headers, timeout=5)
    await js.delete_msg(stream, seq)
    return letter


async def discard(js: JetStreamContext, seq: int, *, namespace: str = "") -> None:
    """Remove dead letter `seq` for good (the event is not wanted any more: say why in the ticket)."""
    try:
        await js.delete_msg(dead_letter_stream(namespace), seq)
    except (NotFoundError, ServerError) as exc:
        if isinstance(exc, NotFoundError) or exc.err_code == NO_MESSAGE:
            raise NoSuchDeadLetter(f"no dead letter {seq}") from None
        raise


async def _main(args: argparse.Namespace) -> int:
    from crm_kit.settings import ServiceSettings

    # The credentials and TLS of the environment (CRM_NATS_*): an operator's NATS user, since a service's own
    # user may not read the dead-letter stream. Only the connection settings are taken from it.
    connection = ServiceSettings(nats_url=args.nats_url, environment="local", service_name="operator")
    nc = await nats.connect(
        connection.nats_servers(), connect_timeout=5, max_reconnect_attempts=1, **connection.nats_options()
    )
    try:
        js = nc.jetstream()
        ns = args.namespace
        if args.command == "list":
            letters = await list_letters(js, namespace=ns, consumer=args.consumer, limit=args.limit)
            for letter in letters:
                print(json.dumps(asdict(letter), ensure_ascii=False))
            print(f"{len(letters)} dead letter(s)", file=sys.stderr)
            return 0
        seqs = list(args.seq)
        if getattr(args, "all", False):
            seqs = [x.seq for x in await list_letters(js, namespace=ns, consumer=args.consumer)]
        failed = 0
        for seq in seqs:
            try:
                if args.command == "replay":
                    letter = await replay(js, seq, namespace=ns)
                    print(f"replayed {seq}: {letter.event_type} {letter.event_id} for {letter.consumer}")
                else:
                    await discard(js, seq, namespace=ns)
                    print(f"discarded {seq}")
            except (NoSuchDeadLetter, ValueError) as exc:
                failed += 1
                print(f"dead letter {seq}: {exc}", file=sys.stderr)
        return 1 if failed else 0
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m crm_kit.events.dead_letters", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--nats-url", default=os.environ.get("CRM_NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--namespace", default=os.environ.get("CRM_EVENTS_NAMESPACE", ""))
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the dead letters waiting, one JSON object per line")
    listing.add_argument("--consumer", default="", help='"service/consumer" or "service"; all when omitted')
    listing.add_argument("--limit", type=int, default=1000)
    again = commands.add_parser("replay", help="publish dead letters again on their original subjects")
    again.add_argument("seq", type=int, nargs="*")
    again.add_argument("--all", action="store_true", help="every dead letter (of --consumer, when given)")
    again.add_argument("--consumer", default="")
    drop = commands.add_parser("discard", help="remove dead letters for good")
    drop.add_argument("seq", type=int, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "replay" and not args.seq and not args.all:
        parser.error("replay: give dead-letter numbers or --all")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
