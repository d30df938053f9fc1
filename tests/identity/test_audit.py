import asyncio
import logging
import uuid

import asyncpg
import grpc
import pytest
from crm.common.v1 import event_pb2
from crm.identity.v1 import events_pb2
from crm.identity.v1 import identity_pb2 as pb
from crm_identity.models import AUDIT_ENVELOPE_FIELDS
from crm_kit import context
from crm_kit.events import dead_letters
from crm_kit.events.outbox import ENVELOPE_TEXT_LIMITS, build_envelope, envelope_text
from crm_kit.events.subjects import namespaced, subject_for
from crm_kit.ids import new_id
from crm_kit.testing import eventually

from tests.identity.helpers import rpc_error, sign_up, unique_email


async def wait_for_audit(identity, md, predicate, *, within=10.0, **filters):
    deadline = asyncio.get_running_loop().time() + within
    while True:
        items = (await identity.ListAuditEvents(pb.ListAuditEventsRequest(**filters), metadata=md)).items
        if predicate(items):
            return items
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"audit never matched; last: {items}")
        await asyncio.sleep(0.05)


async def test_sign_ins_and_their_failures_land_in_the_audit_trail(identity):
    company = await sign_up(identity)
    await rpc_error(
        identity.CreateToken(pb.CreateTokenRequest(email=company.admin.email, password="wrong wrong"))
    )
    items = await wait_for_audit(
        identity,
        company.md,
        lambda xs: {"login_succeeded", "login_failed"} <= {x.action for x in xs},
        object_id=company.admin.id,
    )
    failed = next(x for x in items if x.action == "login_failed")
    assert failed.actor.id == company.admin.id and failed.service == "identity"
    assert failed.event_type == "crm.identity.v1.LoginFailed"


async def test_a_permission_change_is_audited_with_before_and_after(identity):
    company = await sign_up(identity)
    role = (
        await identity.CreateRole(
            pb.CreateRoleRequest(name="客服", permissions=[pb.Permission(object="ticket", actions=["read"])]),
            metadata=company.md,
        )
    ).role
    await identity.UpdateRole(
        pb.UpdateRoleRequest(
            id=role.id,
            role=pb.Role(permissions=[pb.Permission(object="ticket", actions=["read", "update"])]),
            update_mask={"paths": ["permissions"]},
        ),
        metadata=company.md,
    )
    items = await wait_for_audit(
        identity, company.md, lambda xs: any(x.action == "updated" for x in xs), object_id=role.id
    )
    change = next(x for x in items if x.action == "updated").changes[0]
    assert change.field == "permissions"
    assert list(change.before.list_value.values[0].struct_value["actions"]) == ["read"]
    assert list(change.after.list_value.values[0].struct_value["actions"]) == ["read", "update"]
    assert all(x.actor.id == company.admin.id for x in items)


async def test_a_company_sees_only_its_own_audit_trail(identity):
    a = await sign_up(identity)
    b = await sign_up(identity, "京东")
    await identity.CreateUser(pb.CreateUserRequest(email=unique_email(), name="x"), metadata=b.md)
    await wait_for_audit(identity, b.md, lambda xs: any(x.action == "invited" for x in xs))
    mine = (
        await identity.ListAuditEvents(pb.ListAuditEventsRequest(page={"limit": 200}), metadata=a.md)
    ).items
    # Its own company's trail (the defaults other services set up for it arrive there too), nothing of the other's.
    assert any(x.object_id == a.tenant.id for x in mine)
    assert not any(x.object_id in (b.tenant.id, b.admin.id) for x in mine)
    assert not any(x.action == "invited" for x in mine)


async def test_the_audit_trail_refuses_updates_and_deletes(identity, identity_service, test_infra):
    company = await sign_up(identity)
    await wait_for_audit(identity, company.md, lambda xs: len(xs) > 0)
    conn = await asyncpg.connect(test_infra.asyncpg_dsn(identity_service.settings.database_url))
    try:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("UPDATE audit_events SET action = 'x' WHERE tenant_id = $1", company.tenant.id)
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("DELETE FROM audit_events WHERE tenant_id = $1", company.tenant.id)
    finally:
        await conn.close()


# -- events that cannot stop the stream or slip past the audit trail -----------------------------------------


async def _identity_db(identity_service, test_infra) -> asyncpg.Connection:
    return await asyncpg.connect(test_infra.asyncpg_dsn(identity_service.settings.database_url))


async def test_a_sign_in_with_a_huge_email_is_refused_and_identitys_events_keep_flowing(
    identity, identity_service, test_infra
):
    # ~600 KB: its LoginFailed event would be over NATS's 1 MiB (the address is in the payload and the actor).
    huge = "a" * 600_000 + "@example.com"
    error = await rpc_error(identity.CreateToken(pb.CreateTokenRequest(email=huge, password="whatever1")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Events of other aggregates after it still reach the audit trail...
    company = await sign_up(identity)
    await rpc_error(
        identity.CreateToken(pb.CreateTokenRequest(email=company.admin.email, password="wrong wrong"))
    )
    await wait_for_audit(
        identity,
        company.md,
        lambda xs: any(x.action == "login_failed" for x in xs),
        object_id=company.admin.id,
    )
    # ...and nothing is left behind in identity's outbox: not written at all, so neither stuck nor parked.
    conn = await _identity_db(identity_service, test_infra)
    try:
        await eventually(
            lambda: conn.fetchval("SELECT count(*) = 0 FROM outbox_events WHERE published_at IS NULL"),
            what="identity's outbox drained",
        )
        assert await conn.fetchval("SELECT count(*) FROM outbox_events WHERE length(envelope) > 100000") == 0
    finally:
        await conn.close()


def _at_limit(path: str) -> str:
    """The longest value the kit lets through for an envelope field (characters, not bytes: 汉字 where free)."""
    limit = ENVELOPE_TEXT_LIMITS[path]
    if path == "request_id":
        return "r" * limit
    if path == "trace_id":
        return "f" * limit
    if path == "tenant_id":
        return str(uuid.uuid4())[:limit]
    return "审" * limit


async def _publish(identity_service, envelope: event_pb2.EventEnvelope) -> None:
    bus = identity_service.runtime.bus
    await bus.nc.jetstream().publish(
        namespaced(subject_for(envelope.type), bus.namespace),
        envelope.SerializeToString(),
        headers={"Nats-Msg-Id": envelope.id},
    )


@pytest.mark.parametrize("column", list(AUDIT_ENVELOPE_FIELDS))
async def test_every_envelope_field_the_audit_trail_stores_is_stored_at_the_largest_the_kit_lets_through(
    identity_service, test_infra, column
):
    """Walks the envelope fields the audit trail stores: each at the most the kit's bound lets through (what
    `build_envelope` guarantees), through the real audit consumer, stored whole."""
    path = AUDIT_ENVELOPE_FIELDS[column]
    envelope = build_envelope(
        events_pb2.LoginFailed(email="x@example.com", reason="bad_password"),
        aggregate_type="user",
        aggregate_id=new_id(),
        action="login_failed",
        tenant_id=str(uuid.uuid4()),
        actor=event_pb2.Actor(type=event_pb2.ACTOR_TYPE_USER, id=new_id(), name="王小明"),
    )
    if path != "type":  # the type names the payload: its longest form is a contract's, not a value to forge
        holder, _, name = path.rpartition(".")
        setattr(envelope.actor if holder else envelope, name, _at_limit(path))
    await _publish(identity_service, envelope)
    conn = await _identity_db(identity_service, test_infra)
    try:
        stored = await eventually(
            lambda: conn.fetchval(f"SELECT {column} FROM audit_events WHERE id = $1", envelope.id),
            what=f"the audit record with {path} at its bound",
        )
    finally:
        await conn.close()
    assert stored == envelope_text(envelope, path)


async def test_the_longest_request_id_the_edge_accepts_is_in_the_audit_trail(identity, identity_service):
    # The gateway and the services take a client's request id through the kit's one rule (crm_gateway.middleware
    # calls context.request_id_or_new): the longest it keeps is the longest the audit trail must store.
    longest = "r" * context.REQUEST_ID_MAX
    assert context.request_id_or_new(longest) == longest
    assert context.request_id_or_new(longest + "r") != longest + "r"
    company = await sign_up(identity)
    for request_id in (longest, longest + "r"):
        invited = await identity.CreateUser(
            pb.CreateUserRequest(email=unique_email(), name="x"),
            metadata=[*company.md, ("x-request-id", request_id)],
        )
        items = await wait_for_audit(
            identity, company.md, lambda xs: any(x.action == "invited" for x in xs), object_id=invited.user.id
        )
        stored = next(x for x in items if x.action == "invited").request_id
        if request_id == longest:
            assert stored == longest  # accepted whole at every layer
        else:  # too long for the edge too: replaced by a fresh id, never cut, never a failed write
            assert stored and not longest.startswith(stored) and len(stored) <= context.REQUEST_ID_MAX


async def test_a_long_typed_email_is_audited_with_its_actor_name_shortened_not_lost(
    identity, identity_service, test_infra
):
    typed = "长" * 5000 + "@example.com"  # under the event bound, far over any name column
    runner = identity_service.runtime.bus.runners["identity-audit-identity"]
    gaps = runner.dead_lettered
    await rpc_error(identity.CreateToken(pb.CreateTokenRequest(email=typed, password="whatever1")))
    conn = await _identity_db(identity_service, test_infra)
    try:
        stored = await eventually(
            lambda: conn.fetchval(
                "SELECT actor_name FROM audit_events WHERE event_type = 'crm.identity.v1.LoginFailed' "
                "AND actor_name LIKE '长长长%' ORDER BY id DESC LIMIT 1"
            ),
            what="the sign-in failure in the audit trail",
        )
    finally:
        await conn.close()
    assert len(stored) == ENVELOPE_TEXT_LIMITS["actor.name"] and stored.endswith("…")
    assert runner.dead_lettered == gaps


@pytest.fixture(scope="module")
def metrics_reader():
    """The kit's counters, read in this process (the provider is set once; the kit's instruments follow it)."""
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    return reader


def _dead_letters_counted(reader, consumer: str) -> int:
    data = reader.get_metrics_data()
    total = 0
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "crm.events.dead_letters":
                    for point in metric.data.data_points:
                        attributes = dict(point.attributes)
                        if attributes == {"consumer": consumer, "alert": "audit_gap"}:
                            total += point.value
    return total


async def test_an_event_the_audit_trail_cannot_store_is_an_alert_never_a_silent_gap(
    identity_service, metrics_reader, caplog
):
    consumer = "identity/identity-audit-identity"
    counted = _dead_letters_counted(metrics_reader, consumer)
    # An event the audit trail cannot handle (a payload no deploy knows yet), from identity's own stream.
    envelope = build_envelope(
        events_pb2.LoginFailed(email="x@example.com"),
        aggregate_type="user",
        aggregate_id=new_id(),
        action="login_failed",
        tenant_id=str(uuid.uuid4()),
    )
    envelope.type = "crm.identity.v1.FromTheFuture"
    envelope.payload.type_url = "type.googleapis.com/crm.identity.v1.FromTheFuture"
    with caplog.at_level(logging.ERROR, logger="crm.events.consumer"):
        await _publish(identity_service, envelope)
        bus = identity_service.runtime.bus
        js = bus.nc.jetstream()
        letters = await eventually(
            lambda: _letters_of(js, bus.namespace, envelope.id), what="the dead letter of the audit event"
        )
    assert [x.alert for x in letters] == ["audit_gap"] and letters[0].consumer == consumer
    alerts = [r for r in caplog.records if getattr(r, "alert", "") == "audit_gap"]
    assert alerts and alerts[-1].levelno == logging.ERROR and "ALERT audit_gap" in alerts[-1].getMessage()
    assert _dead_letters_counted(metrics_reader, consumer) == counted + 1
    await dead_letters.discard(js, letters[0].seq, namespace=bus.namespace)


async def _letters_of(js, namespace: str, event_id: str) -> list[dead_letters.DeadLetter]:
    letters = await dead_letters.list_letters(
        js, namespace=namespace, consumer="identity/identity-audit-identity"
    )
    return [x for x in letters if x.event_id == event_id]


def test_every_audit_column_holding_envelope_text_takes_the_kits_bound():
    """The walk above covers every column: a text column of the audit trail holds an envelope field (sized
    from the kit's bound) or something the trail derives itself."""
    from crm_identity.models import AuditRecord
    from sqlalchemy import String

    text_columns = {
        c.name: c.type.length for c in AuditRecord.__table__.columns if isinstance(c.type, String)
    }
    assert set(text_columns) - set(AUDIT_ENVELOPE_FIELDS) == {"id", "actor_type", "service"}
    for column, path in AUDIT_ENVELOPE_FIELDS.items():
        assert text_columns[column] >= ENVELOPE_TEXT_LIMITS[path], column
