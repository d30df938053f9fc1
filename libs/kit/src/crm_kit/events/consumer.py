"""Durable consumers: a service declares what it handles; the kit does delivery, retries, dead letters and the inbox.

    async def on_user_invited(uow: UnitOfWork, envelope: EventEnvelope, payload: UserInvited) -> None:
        uow.session.add(Invitation(...))          # the effect, in the unit of work the kit opened

    CONSUMERS = [Consumer(name="notifications-user-invited", filter_subjects=[UserInvited],
                          handler=on_user_invited)]

For each delivered event the kit opens a unit of work, inserts the inbox row (consumer, event id) — when it is
already there the event was handled before and the kit only acks — calls the handler, commits, then acks. The
effect and the inbox row commit together, so a redelivery has no second effect (see `crm_kit.events.inbox`).

Failures: a handler that raises is retried: the kit naks with the delay `backoff[attempt - 1]`, and JetStream
redelivers; a consumer that dies mid-event gets it redelivered by JetStream after the same backoff. After
`max_deliver` attempts, or at once when the handler raises `PermanentError` or the event cannot be decoded, the
event goes to the dead-letter subject `dlq.<service>.<consumer>` with the error in the `Crm-Error` header, and is
terminated, so one bad event does not block or loop forever. A handler is cancelled after `timeout` seconds.

Only a failure of the handler itself counts as an attempt. When the infrastructure is down (the database
unreachable or refusing connections, NATS disconnected: the error is a connection error, or the database does
not answer a probe right after the failure), the consumer keeps the event, tells JetStream it is still in
progress (and so for the events it has buffered), waits until the database answers and NATS is connected, and
handles the same delivery again: an outage of any length dead-letters nothing and costs no attempt. An
event whose last attempt never answered at all (the replica died) is dead-lettered by the replicas still
running, from JetStream's max-deliveries advisory.

The handler's span is a child of the span that wrote the event (W3C `traceparent` carried by the outbox and the
relay), so one trace shows the request and everything it caused in other services.

Why a hand-written pull loop rather than nats-py's `fetch()`: `fetch(n)` waits for all `n` messages (or the
timeout) once one has arrived, which adds up to the whole timeout to the latency of a lone event. The loop here
keeps one pull request open, handles each message the moment it arrives, and asks for more when the request is
used up; idle heartbeats tell it when a request was lost (a NATS restart) so it asks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import pkgutil
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import nats.errors
from crm.common.v1 import event_pb2
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, TracerProvider
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from crm_kit import context, telemetry
from crm_kit.db import (
    Database,
    UnitOfWork,
    caller_error,
    database_unreachable,
    driver_of,
    error_chain,
    transaction,
)
from crm_kit.errors import describe, format_exception
from crm_kit.events import inbox
from crm_kit.events.config import EventSettings
from crm_kit.events.subjects import (
    context_of,
    dead_letter_subject,
    event_type,
    namespaced,
    stream_for_context,
    strip_namespace,
)

log = logging.getLogger("crm.events.consumer")

Handler = Callable[[UnitOfWork, event_pb2.EventEnvelope, Any], Awaitable[None]]

# Headers on a dead-lettered message (besides the original `traceparent`).
ERROR_HEADER = "Crm-Error"
ERROR_TYPE_HEADER = "Crm-Error-Type"
CONSUMER_HEADER = "Crm-Consumer"
ORIGINAL_SUBJECT_HEADER = "Crm-Original-Subject"
ORIGINAL_SEQUENCE_HEADER = "Crm-Original-Sequence"
DELIVERIES_HEADER = "Crm-Deliveries"
ALERT_HEADER = "Crm-Alert"

# Every event a consumer gives up on, by consumer and alert: what operators watch (with the dead-letter list).
DEAD_LETTERS = telemetry.counter("crm.events.dead_letters", "events a consumer gave up on (dead-lettered)")


class PermanentError(Exception):
    """Raise from a handler when retrying cannot help: the event goes to the dead-letter stream at once."""


@dataclass(frozen=True)
class Consumer:
    """A durable JetStream consumer and its handler. All filter subjects must belong to one producing service.

    `filter_subjects` takes event message classes (`UserInvited`) or subjects without the namespace
    (`crm.identity.v1.UserInvited`, `crm.identity.>`). `backoff[i]` is the wait before attempt `i + 2`;
    `max_deliver` bounds the attempts and must exceed `len(backoff)` (a JetStream rule).
    """

    name: str
    handler: Handler
    filter_subjects: Sequence[str | type[Message]] = ()
    max_deliver: int = 5
    backoff: Sequence[float] = (1.0, 5.0, 30.0, 120.0)
    # Messages asked for per pull request: more is more throughput, but every buffered message's ack timer runs.
    batch: int = 16
    max_ack_pending: int = 1000
    # A handler still running after this long is cancelled (its transaction rolls back) and counts as failed,
    # so one stuck call cannot stall the consumer for good.
    timeout: float = 60.0
    # Events handled in one transaction when several are waiting (1: each in its own). For handlers that only
    # record what they get (the audit trail), a few dozen cut the cost per event several times. A batch that
    # fails rolls back whole and its events are handled one by one, so retries and dead letters stay per
    # event. Batched events get no span of their own (their envelopes keep the trace id).
    per_transaction: int = 1
    # For a consumer whose dead letter is an incident, not a chore (the audit trail: "audit_gap"): a dead
    # letter is logged at error level with `alert` in the log record, carries it in the Crm-Alert header (the
    # dead-letter list shows it) and is counted with it in `crm.events.dead_letters`.
    alert: str = ""
    subjects: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        if not inbox.CONSUMER_NAME.fullmatch(self.name):
            raise ValueError(f"consumer name must be letters, digits, '-' or '_': {self.name!r}")
        subjects = tuple(s if isinstance(s, str) else event_type(s) for s in self.filter_subjects)
        if not subjects:
            raise ValueError(f"consumer {self.name} has no filter_subjects")
        contexts = {context_of(s) for s in subjects}
        if len(contexts) != 1:
            raise ValueError(f"consumer {self.name} reads from several services' streams: {sorted(contexts)}")
        if self.max_deliver < 1 or (self.backoff and self.max_deliver <= len(self.backoff)):
            raise ValueError(f"consumer {self.name}: max_deliver must exceed len(backoff)")
        object.__setattr__(self, "subjects", subjects)

    @property
    def context(self) -> str:
        return context_of(self.subjects[0])

    def delay_after(self, attempt: int) -> float:
        """How long to wait before redelivering after failed attempt number `attempt` (1-based)."""
        if not self.backoff:
            return 0.0
        return float(self.backoff[min(attempt, len(self.backoff)) - 1])


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: `*` is one token, a trailing `>` one or more."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def unpack_payload(envelope: event_pb2.EventEnvelope) -> Message:
    """The payload as its generated class, looked up by the Any's type name in the default descriptor pool.

    The class is known once its `_pb2` module is imported. A consumer of another service's events by subject
    (identity's audit trail reads every stream) may never have imported it, so an unknown type's package is
    imported from the contracts first (`crm.sales.v1.LeadCreated` → `crm.sales.v1.events_pb2`, then the
    package's other `_pb2` modules). A type that is still unknown is a `PermanentError`: the event is kept in
    the dead-letter stream, to replay after a deploy that knows it.
    """
    name = envelope.payload.TypeName()
    try:
        descriptor = _message_type(name)
    except KeyError as exc:
        raise PermanentError(f"unknown payload type {name!r}") from exc
    payload = message_factory.GetMessageClass(descriptor)()
    if not envelope.payload.Unpack(payload):
        raise PermanentError(f"payload does not unpack as {name}")
    return payload


def _message_type(name: str) -> Any:
    pool = descriptor_pool.Default()
    try:
        return pool.FindMessageTypeByName(name)
    except KeyError:
        pass
    package = name.rpartition(".")[0]
    with contextlib.suppress(ImportError):
        importlib.import_module(f"{package}.events_pb2")  # where a context's events live, by convention
    with contextlib.suppress(KeyError):
        return pool.FindMessageTypeByName(name)
    with contextlib.suppress(ImportError):
        for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
            if module.name.endswith("_pb2"):
                importlib.import_module(f"{package}.{module.name}")
    return pool.FindMessageTypeByName(name)


def _header_value(text: str, limit: int = 1000) -> str:
    return " ".join(text.split())[:limit]


_NATS_DOWN = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoServersError,
    nats.errors.StaleConnectionError,
)


def infrastructure_error(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the database or NATS is unreachable, rather than the handler failed.

    Other errors, a socket error among them (a handler's mail server may be down), are decided by probing the
    database and NATS (`ConsumerRunner._infrastructure_down`): the handler's own dependencies are its failure."""
    return database_unreachable(exc) or any(isinstance(e, _NATS_DOWN) for e in error_chain(exc))


_STOP = object()
_PULL = object()


class _KeepAlive:
    """While a handler runs longer than half the ack wait, tell JetStream it is in progress, so it is not
    redelivered to another replica meanwhile. Costs one timer per event; nothing is sent for fast handlers."""

    def __init__(self, msg: Msg, interval: float):
        self.msg = msg
        self.interval = interval
        self.loop = asyncio.get_running_loop()
        self.done = False
        self.task: asyncio.Future[None] | None = None
        self.handle = self.loop.call_later(interval, self._fire)

    def _fire(self) -> None:
        if not self.done:
            self.task = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        with contextlib.suppress(Exception):
            await self.msg.in_progress()
        if not self.done:
            self.handle = self.loop.call_later(self.interval, self._fire)

    def cancel(self) -> None:
        self.done = True
        self.handle.cancel()


class ConsumerRunner:
    """Runs one `Consumer` in this process (created and owned by `EventBus`)."""

    def __init__(
        self,
        consumer: Consumer,
        *,
        database: Database,
        nc: NATS,
        service: str,
        settings: EventSettings,
        tracer_provider: TracerProvider | None = None,
        pull_expires: float = 30.0,
        idle_heartbeat: float = 5.0,
    ):
        self.consumer = consumer
        self.database = database
        self.nc = nc
        self.js = nc.jetstream()
        self.service = service
        self.settings = settings
        self.namespace = settings.namespace
        self.stream = stream_for_context(consumer.context, self.namespace)
        self.dead_letter_subject = dead_letter_subject(service, consumer.name, self.namespace)
        self.pull_expires = pull_expires
        self.idle_heartbeat = idle_heartbeat
        self.tracer = trace.get_tracer("crm_kit.events", tracer_provider=tracer_provider)
        # Filtering on this side when the server cannot hold several filter subjects (nats-server < 2.10).
        self.client_filter: tuple[str, ...] = ()
        # Counters, for health and tests.
        self.handled = 0
        self.duplicates = 0
        self.retried = 0
        self.dead_lettered = 0
        self.acked = 0
        self.transactions = 0
        # Outages waited out without counting an attempt.
        self.infrastructure_waits = 0
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._sub: Subscription | None = None
        self._advisories: Subscription | None = None
        self._inbox = ""
        self._stopping = False
        self._stop_requested = asyncio.Event()  # ends a wait for the infrastructure at once
        self._task: asyncio.Task[None] | None = None
        self._engine: AsyncEngine
        self._connection: AsyncConnection | None = None
        self._claim: asyncpg.prepared_stmt.PreparedStatement
        self._progress_interval = max(0.05, (consumer.backoff[0] if consumer.backoff else 30.0) / 2)

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        # AUTOCOMMIT: SQLAlchemy leaves transactions to the kit, which begins and commits on the driver.
        self._engine = create_async_engine(
            self.database.url, poolclass=NullPool, isolation_level="AUTOCOMMIT", hide_parameters=True
        )
        await self.ensure_consumer()
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_message)
        self._advisories = await self.nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream}.{self.consumer.name}",
            cb=self._on_max_deliveries,
        )
        self._task = asyncio.create_task(self._run(), name=f"consumer:{self.consumer.name}")

    async def stop(self) -> None:
        """Finish the event in hand, stop pulling, hand back the events buffered but not started."""
        if self._task is None:
            return
        self._stopping = True
        self._stop_requested.set()
        self._queue.put_nowait(_STOP)
        try:
            await self._task
        finally:
            self._task = None
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    await self._connection.close()
                self._connection = None
            await self._engine.dispose()
            for sub in (self._sub, self._advisories):
                if sub is not None:
                    with contextlib.suppress(nats.errors.Error):
                        await sub.unsubscribe()
            while not self._queue.empty():
                msg = self._queue.get_nowait()
                if isinstance(msg, Msg) and msg.reply:  # an event, not a status message or a sentinel
                    with contextlib.suppress(Exception):
                        await msg.nak()

    def pull_again(self) -> None:
        """Issue a new pull request now (after a reconnect the old one is gone from the server)."""
        self._queue.put_nowait(_PULL)

    async def ensure_consumer(self) -> None:
        c = self.consumer
        subjects = [namespaced(s, self.namespace) for s in c.subjects]
        config = ConsumerConfig(
            name=c.name,
            durable_name=c.name,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_deliver=c.max_deliver,
            backoff=[float(b) for b in c.backoff] or None,
            max_ack_pending=c.max_ack_pending,
        )
        version = self.nc.connected_server_version
        if len(subjects) == 1:
            config.filter_subject = subjects[0]
        elif (version.major, version.minor) >= (2, 10):
            config.filter_subjects = subjects
        else:
            config.filter_subject = namespaced(f"crm.{c.context}.>", self.namespace)
            self.client_filter = tuple(subjects)
        await self.js.add_consumer(self.stream, config)

    # -- the pull loop ---------------------------------------------------------------------------------------

    async def _on_message(self, msg: Msg) -> None:
        self._queue.put_nowait(msg)

    async def _pull(self) -> None:
        request = {
            "batch": self.consumer.batch,
            "expires": int(self.pull_expires * 1e9),
            "idle_heartbeat": int(self.idle_heartbeat * 1e9),
        }
        await self.nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.consumer.name}",
            json.dumps(request).encode(),
            reply=self._inbox,
        )

    async def _run(self) -> None:
        outstanding = 0
        silence = 2 * self.idle_heartbeat + 1
        carried: Any = None  # what ended the last batch (a status or control item), handled next
        while not self._stopping:
            try:
                if outstanding <= 0 and carried is None:
                    await self._pull()
                    outstanding = self.consumer.batch
                if carried is not None:
                    msg, carried = carried, None
                else:
                    try:
                        async with asyncio.timeout(silence):
                            msg = await self._queue.get()
                    except TimeoutError:
                        # No message and no heartbeat: the pull request was lost (reconnect, server restart).
                        outstanding = 0
                        continue
                if msg is _STOP:
                    break
                if msg is _PULL:
                    outstanding = 0
                    continue
                status = (msg.headers or {}).get("Status") if not msg.data else None
                if status:
                    outstanding = await self._on_status(status, msg, outstanding)
                    continue
                if self.consumer.per_transaction > 1 and not self._queue.empty():
                    batch, carried = self._waiting(msg)
                    outstanding -= len(batch)
                    await self._handle_batch(batch)
                    continue
                outstanding -= 1
                await self._handle(msg)
            except asyncio.CancelledError:
                raise
            except (nats.errors.Error, OSError) as exc:
                log.warning("consumer %s: NATS error, pulling again: %s", self.consumer.name, exc)
                outstanding = 0
                await asyncio.sleep(0.2)
            except Exception:
                log.exception("consumer %s: unexpected error", self.consumer.name)
                outstanding = 0
                await asyncio.sleep(0.2)

    async def _on_status(self, status: str, msg: Msg, outstanding: int) -> int:
        if status == "100":  # idle heartbeat: the request is alive
            return outstanding
        description = (msg.headers or {}).get("Description", "")
        if status == "409" and "deleted" in description.lower():
            log.warning("consumer %s was deleted on the server; creating it again", self.consumer.name)
            await self.ensure_consumer()
        elif status not in ("404", "408", "409"):
            log.warning("consumer %s: pull status %s %s", self.consumer.name, status, description)
            await asyncio.sleep(0.2)
        # 404/408: the request ended (no messages, expired); 409: ended for another reason. Ask again.
        return 0

    # -- one event -------------------------------------------------------------------------------------------

    def _waiting(self, first: Msg) -> tuple[list[Msg], Any]:
        """`first` and the events already waiting behind it, up to `per_transaction`; and the status or control
        item that ended the run, if one did (handled after the batch, in order)."""
        batch = [first]
        while len(batch) < self.consumer.per_transaction and not self._queue.empty():
            item = self._queue.get_nowait()
            if item is _STOP or item is _PULL or not item.data:
                return batch, item
            batch.append(item)
        return batch, None

    async def _handle_batch(self, msgs: list[Msg]) -> None:
        """Several events in one unit of work; if it fails, each is handled on its own (`_handle`)."""
        ready: list[tuple[Msg, event_pb2.EventEnvelope, Message]] = []
        for msg in msgs:
            if self.client_filter and not any(subject_matches(p, msg.subject) for p in self.client_filter):
                await msg.ack()
                continue
            try:
                envelope = event_pb2.EventEnvelope.FromString(msg.data)
                payload = unpack_payload(envelope)
            except Exception:
                await self._handle(msg)  # which dead-letters it
                continue
            ready.append((msg, envelope, payload))
        if not ready:
            return
        try:
            async with asyncio.timeout(self.consumer.timeout):
                await self._apply_batch(ready)
        except Exception as exc:
            log.warning(
                "consumer %s: a batch of %s events failed (%r); handling them one by one",
                self.consumer.name,
                len(ready),
                exc,
            )
            for msg, _, _ in ready:
                await self._handle(msg)
            return
        for msg, _, _ in ready:
            await msg.ack()
            self.acked += 1

    async def _apply_batch(self, ready: list[tuple[Msg, event_pb2.EventEnvelope, Message]]) -> None:
        handled = duplicates = 0
        async with self._unit_of_work([e.id for _, e, _ in ready]) as (uow, new):
            for _, envelope, payload in ready:
                if envelope.id not in new:  # handled before, or twice in this batch
                    duplicates += 1
                    continue
                new.discard(envelope.id)
                token = context.bind(self._context_of(envelope, envelope.trace_id))
                try:
                    await self.consumer.handler(uow, envelope, payload)
                    handled += 1
                finally:
                    context.reset(token)
        self.handled += handled
        self.duplicates += duplicates

    def _context_of(self, envelope: event_pb2.EventEnvelope, trace_id: str) -> context.RequestContext:
        """What a handler runs as: this consumer, acting for the event's tenant."""
        return context.RequestContext(
            principal=context.Principal(
                tenant_id=envelope.tenant_id,
                actor_id=f"{self.service}/{self.consumer.name}",
                actor_type=event_pb2.ACTOR_TYPE_SYSTEM,
                name=self.consumer.name,
            ),
            request_id=envelope.request_id,
            trace_id=trace_id,
        )

    async def _handle(self, msg: Msg) -> None:
        subject = strip_namespace(msg.subject, self.namespace)
        if self.client_filter and not any(subject_matches(p, msg.subject) for p in self.client_filter):
            await msg.ack()
            return
        attempt = msg.metadata.num_delivered
        try:
            envelope = event_pb2.EventEnvelope.FromString(msg.data)
            payload = unpack_payload(envelope)
        except Exception as exc:
            await self._dead_letter(
                msg, exc if isinstance(exc, PermanentError) else PermanentError(repr(exc))
            )
            return
        parent = propagate.extract(msg.headers or {})
        with self.tracer.start_as_current_span(
            f"{subject} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.destination.name": msg.subject,
                "messaging.consumer.group.name": self.consumer.name,
                "messaging.message.id": envelope.id,
                "messaging.message.delivery_count": attempt,
            },
        ) as span:
            span_context = span.get_span_context()
            token = context.bind(
                self._context_of(
                    envelope, f"{span_context.trace_id:032x}" if span_context.is_valid else envelope.trace_id
                )
            )
            keepalive = _KeepAlive(msg, self._progress_interval)
            try:
                while True:
                    try:
                        async with asyncio.timeout(self.consumer.timeout):
                            await self._apply(envelope, payload)
                        break
                    except Exception as exc:
                        if await self._infrastructure_down(exc):
                            if await self._wait_for_infrastructure(exc):
                                continue  # the same delivery again: an outage costs no attempt
                            await msg.nak()  # stopping: another replica takes it
                            return
                        span.record_exception(
                            exc,
                            attributes={
                                "exception.message": describe(exc),
                                "exception.stacktrace": format_exception(exc),
                            },
                        )
                        span.set_status(trace.Status(trace.StatusCode.ERROR, describe(exc)))
                        await self._failed(msg, exc, attempt)
                        return
            finally:
                keepalive.cancel()
                context.reset(token)
        await msg.ack()
        self.acked += 1

    async def _apply(self, envelope: event_pb2.EventEnvelope, payload: Message) -> None:
        async with self._unit_of_work([envelope.id]) as (uow, new):
            if not new:
                self.duplicates += 1
                return
            await self.consumer.handler(uow, envelope, payload)
        self.handled += 1

    @asynccontextmanager
    async def _unit_of_work(self, event_ids: list[str]) -> AsyncIterator[tuple[UnitOfWork, set[str]]]:
        """One transaction on this consumer's own connection: claims `event_ids` in the inbox, yields a unit of
        work and the ids this consumer had not handled yet, commits.

        A consumer handles one event (or batch) at a time, so it keeps one connection instead of checking one out
        of the pool per event: no pool checkout and no pre-ping between an event's arrival and its handler.

        The kit's own statements (BEGIN, the inbox claim, COMMIT) go straight to the driver
        (`crm_kit.db.transaction`); the handler's session is bound to the same connection in SQLAlchemy's
        AUTOCOMMIT mode, so its statements run inside the kit's transaction. That keeps SQLAlchemy's cost off
        the three statements every event pays. The connection is dropped after any failure, and the next event
        opens a fresh one.
        """
        connection, claim = await self._connect()
        claim_now = inbox.claim_with_begin(self.consumer.name, event_ids[0]) if len(event_ids) == 1 else ""
        try:
            async with transaction(connection, then=claim_now) as (driver, status):
                if claim_now:
                    new = set(event_ids) if inbox.claimed_with_begin(status) else set()
                else:
                    new = await inbox.claim(claim, self.consumer.name, event_ids)
                async with self.database.autocommit_sessions(bind=connection) as session:
                    uow = UnitOfWork(session)
                    yield uow, new
                    await session.flush()
                    await uow.write_events(driver)
        except BaseException as exc:
            self._connection = None
            with contextlib.suppress(Exception):
                await connection.close()
            mapped = caller_error(exc)
            if mapped is not None:
                raise mapped from exc
            raise
        self.transactions += 1
        uow.committed(self.database.after_commit_hooks)

    async def _connect(self) -> tuple[AsyncConnection, asyncpg.prepared_stmt.PreparedStatement]:
        if self._connection is None or self._connection.closed:
            connection = await self._engine.connect()
            try:
                self._claim = await driver_of(connection).prepare(inbox.CLAIM)
            except BaseException:
                await connection.close()
                raise
            self._connection = connection
        return self._connection, self._claim

    async def _infrastructure_down(self, exc: BaseException) -> bool:
        """A failure that says nothing about the handler: a connection error, or a database or NATS that does
        not answer right after it (the handler may have seen the outage as something else, a timeout say)."""
        if isinstance(exc, PermanentError):
            return False
        return infrastructure_error(exc) or not await self._infrastructure_up()

    async def _infrastructure_up(self) -> bool:
        if not self.nc.is_connected:
            return False
        try:
            async with asyncio.timeout(5.0), self._engine.connect() as connection:
                await driver_of(connection).fetchval("SELECT 1")
        except Exception:
            return False
        return True

    async def _wait_for_infrastructure(self, exc: BaseException) -> bool:
        """Hold the event in hand and the buffered ones (in progress, so JetStream neither redelivers nor counts
        them) until the database answers and NATS is connected. False when the consumer is stopping."""
        log.warning(
            "consumer %s: infrastructure unavailable (%r); holding its events until it is back, no attempt counted",
            self.consumer.name,
            exc,
        )
        started = asyncio.get_running_loop().time()
        holding = asyncio.create_task(self._hold_buffered())
        delay = self._progress_interval
        try:
            while not self._stopping:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stop_requested.wait()
                if self._stopping:
                    break
                delay = min(delay * 2, 5.0)
                if await self._infrastructure_up():
                    log.info(
                        "consumer %s: infrastructure back after %.1fs; resuming",
                        self.consumer.name,
                        asyncio.get_running_loop().time() - started,
                    )
                    self.infrastructure_waits += 1
                    return True
            return False
        finally:
            holding.cancel()

    async def _hold_buffered(self) -> None:
        """Tell JetStream the events buffered behind the one in hand are in progress, as `_KeepAlive` does for
        that one, so their ack timers do not run out (and count deliveries) while the consumer waits."""
        while True:
            for item in list(self._queue._queue):  # type: ignore[attr-defined]  # a snapshot, not consumed
                if isinstance(item, Msg) and item.reply:
                    with contextlib.suppress(Exception):
                        await item.in_progress()
            await asyncio.sleep(self._progress_interval)

    async def _failed(self, msg: Msg, exc: Exception, attempt: int) -> None:
        if isinstance(exc, PermanentError) or attempt >= self.consumer.max_deliver:
            await self._dead_letter(msg, exc)
            return
        delay = self.consumer.delay_after(attempt)
        log.warning(
            "consumer %s: attempt %s of %s failed, retrying in %ss: %r",
            self.consumer.name,
            attempt,
            self.consumer.max_deliver,
            delay,
            exc,
        )
        self.retried += 1
        await msg.nak(delay=delay or None)

    def _dead_letter_headers(
        self, *, subject: str, stream_seq: int, deliveries: int, exc: BaseException, traceparent: str | None
    ) -> dict[str, str]:
        headers = {
            # One dead letter per consumer and stream message, however often or by whom this is retried.
            "Nats-Msg-Id": f"{self.consumer.name}:{self.stream}:{stream_seq}",
            # Described, not str(exc): a database error's text would carry the values it failed on.
            ERROR_HEADER: _header_value(describe(exc, with_type=False)),
            ERROR_TYPE_HEADER: type(exc).__name__,
            CONSUMER_HEADER: f"{self.service}/{self.consumer.name}",
            ORIGINAL_SUBJECT_HEADER: subject,
            ORIGINAL_SEQUENCE_HEADER: str(stream_seq),
            DELIVERIES_HEADER: str(deliveries),
        }
        if traceparent:
            headers["traceparent"] = traceparent
        if self.consumer.alert:
            headers[ALERT_HEADER] = self.consumer.alert
        return headers

    def _gave_up(self, message: str, *args: Any) -> None:
        """A dead letter is written: count it and say so at error level (with the alert marker, if any)."""
        self.dead_lettered += 1
        consumer = f"{self.service}/{self.consumer.name}"
        DEAD_LETTERS.add(1, {"consumer": consumer, "alert": self.consumer.alert or "none"})
        prefix = f"ALERT {self.consumer.alert}: " if self.consumer.alert else ""
        log.error(
            prefix + message,
            *args,
            extra={"alert": self.consumer.alert, "consumer": consumer} if self.consumer.alert else {},
        )

    async def _on_max_deliveries(self, advisory: Msg) -> None:
        """JetStream gave up on an event whose last attempt never answered (the replica handling it died, or
        lost its connection): copy the event from the stream to the dead-letter subject, so it is not lost
        silently. Every replica hears the advisory; the Nats-Msg-Id keeps one copy."""
        try:
            stream_seq = int(json.loads(advisory.data)["stream_seq"])
            deliveries = int(json.loads(advisory.data).get("deliveries", 0))
            original = await self.js.get_msg(self.stream, stream_seq)
            headers = self._dead_letter_headers(
                subject=original.subject or "",
                stream_seq=stream_seq,
                deliveries=deliveries,
                exc=TimeoutError(f"no answer after {deliveries} deliveries (consumer died or hung)"),
                traceparent=(original.headers or {}).get("traceparent"),
            )
            await self.js.publish(self.dead_letter_subject, original.data or b"", headers=headers, timeout=5)
        except Exception:
            log.exception(
                "consumer %s: cannot dead-letter after a max-deliveries advisory", self.consumer.name
            )
            return
        self._gave_up(
            "consumer %s: stream message %s exhausted its deliveries unanswered",
            self.consumer.name,
            stream_seq,
        )

    async def _dead_letter(self, msg: Msg, exc: Exception) -> None:
        meta = msg.metadata
        headers = self._dead_letter_headers(
            subject=msg.subject,
            stream_seq=meta.sequence.stream,
            deliveries=meta.num_delivered,
            exc=exc,
            traceparent=(msg.headers or {}).get("traceparent"),
        )
        try:
            await self.js.publish(self.dead_letter_subject, msg.data, headers=headers, timeout=5)
        except Exception:
            # Not acked, so JetStream redelivers it; after the last attempt its advisory brings it back here.
            log.exception(
                "consumer %s: cannot dead-letter stream message %s", self.consumer.name, meta.sequence
            )
            return
        self._gave_up(
            "consumer %s: gave up on stream message %s after %s attempts: %r",
            self.consumer.name,
            meta.sequence.stream,
            meta.num_delivered,
            exc,
        )
        await msg.term()
