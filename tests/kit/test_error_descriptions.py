"""Database errors carry personal data (statement parameters, DETAIL lines such as `Key (email)=(x@y)`, values
quoted in the message); `crm_kit.errors.describe` names the error without them, and every log record of a
service goes through it: real errors from real PostgreSQL, and an RPC that fails on one behind the kit's real
gRPC server."""

from __future__ import annotations

import logging
import uuid

import asyncpg
import grpc
import pytest
from crm.identity.v1 import identity_pb2 as ipb
from crm.identity.v1 import identity_pb2_grpc
from crm_kit import logs
from crm_kit.db import Database, caller_error
from crm_kit.errors import describe, format_exception
from crm_kit.grpc_server import GrpcServer, Servicer
from pythonjsonlogger.json import JsonFormatter
from sqlalchemy import text

EMAIL = "li.na.1984@example.cn"
TABLE = """CREATE TABLE people (
    id serial PRIMARY KEY,
    email varchar(320) UNIQUE,
    age integer CONSTRAINT ck_people_age CHECK (age >= 0)
)"""


@pytest.fixture
async def db(test_infra):
    database = Database(await test_infra.database(f"errdesc{uuid.uuid4().hex[:8]}"), pool_size=2)
    async with database.engine.begin() as conn:
        await conn.execute(text(TABLE))
        await conn.execute(text("INSERT INTO people (email, age) VALUES (:e, 40)"), {"e": EMAIL})
    yield database
    await database.dispose()


async def _raised(call) -> BaseException:
    try:
        await call
    except Exception as exc:
        return exc
    raise AssertionError("the statement succeeded")


def _everything(exc: BaseException) -> str:
    """All the text an unguarded `str(exc)`/traceback would show, its driver cause's DETAIL included."""
    out = [str(exc), repr(exc)]
    for e in (exc, getattr(exc, "orig", None), getattr(getattr(exc, "orig", None), "__cause__", None)):
        out.append(str(getattr(e, "detail", "") or ""))
    return "\n".join(out)


async def test_real_database_errors_are_described_by_kind_without_the_values(db, test_infra):
    conn = await asyncpg.connect(test_infra.asyncpg_dsn(db.url))
    try:
        errors = {
            # (what the error is, as describe must still say it)
            "UniqueViolationError": await _raised(
                conn.execute("INSERT INTO people (email, age) VALUES ($1, 1)", EMAIL)
            ),
            "CheckViolationError": await _raised(
                conn.execute("INSERT INTO people (email, age) VALUES ($1, -1)", "x" + EMAIL)
            ),
            "InvalidTextRepresentationError": await _raised(conn.fetchval("SELECT $1::text::uuid", EMAIL)),
            "DataError": await _raised(conn.fetchval("SELECT $1::int", EMAIL)),
        }
    finally:
        await conn.close()
    async with db.sessions() as session:
        errors["IntegrityError"] = await _raised(
            session.execute(text("INSERT INTO people (email, age) VALUES (:e, 1)"), {"e": EMAIL})
        )
    async with db.sessions() as session:
        errors["DBAPIError"] = await _raised(session.execute(text("SELECT CAST(:e AS uuid)"), {"e": EMAIL}))

    for kind, exc in errors.items():
        assert EMAIL in _everything(exc), (kind, _everything(exc))  # the error does carry the value
        assert kind in describe(exc), (kind, describe(exc))
        assert EMAIL not in describe(exc), describe(exc)
        assert EMAIL not in format_exception(exc)
        mapped = caller_error(exc)  # what a caller (and a dead letter) is told
        assert mapped is None or EMAIL not in str(mapped), mapped
    assert "people_email_key" in describe(errors["UniqueViolationError"])
    assert "ck_people_age" in describe(errors["CheckViolationError"])
    assert "23505" in describe(errors["IntegrityError"])
    assert str(caller_error(errors["IntegrityError"])) == "already exists: the same email"


class _Failing(identity_pb2_grpc.IdentityServiceServicer):
    """A servicer with a bug: a write that skips the unit of work, so its unique violation is unexpected."""

    def __init__(self, db: Database):
        self.db = db

    async def ListRoles(self, request, context):
        async with self.db.sessions() as session, session.begin():
            await session.execute(text("INSERT INTO people (email, age) VALUES (:e, 1)"), {"e": EMAIL})
        return ipb.ListRolesResponse()


async def test_an_rpc_failing_on_a_database_error_logs_its_kind_not_its_values(db, identity_service, caplog):
    # A running service installed the safe records when it started.
    assert logs.scrubbing()
    method = "/crm.identity.v1.IdentityService/ListRoles"
    server = GrpcServer(
        [
            Servicer(
                identity_pb2_grpc.add_IdentityServiceServicer_to_server,
                _Failing(db),
                "crm.identity.v1.IdentityService",
            )
        ],
        verifier=None,
        public_methods=[method],
        host="127.0.0.1",
        port=0,
    )
    await server.start()
    caplog.set_level(logging.ERROR, logger="crm.grpc")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await identity_pb2_grpc.IdentityServiceStub(channel).ListRoles(ipb.ListRolesRequest())
    finally:
        await server.stop(0)
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert EMAIL not in (raised.value.details() or "")
    [record] = [r for r in caplog.records if r.name == "crm.grpc"]
    assert "IntegrityError" in caplog.text and "UniqueViolationError" in caplog.text
    assert "Traceback" in caplog.text  # where it happened is kept
    assert EMAIL not in caplog.text
    formatted = JsonFormatter("%(levelname)s %(name)s %(message)s").format(record)
    assert "UniqueViolationError" in formatted and EMAIL not in formatted
    assert EMAIL not in logging.Formatter().format(record)


async def test_an_rpc_whose_database_refuses_connections_answers_unavailable_not_internal(
    db, test_infra, caplog
):
    """An outage is no bug: the caller gets UNAVAILABLE (503 at the gateway, retried by clients), and the log
    says which database error it was without a traceback of an 'unhandled error'."""
    name = db.engine.url.database
    admin = await asyncpg.connect(test_infra.postgres_admin_dsn)
    await db.engine.dispose()  # no pooled connection survives: the next call must connect
    method = "/crm.identity.v1.IdentityService/ListRoles"
    server = GrpcServer(
        [
            Servicer(
                identity_pb2_grpc.add_IdentityServiceServicer_to_server,
                _Failing(db),
                "crm.identity.v1.IdentityService",
            )
        ],
        verifier=None,
        public_methods=[method],
        host="127.0.0.1",
        port=0,
    )
    await server.start()
    caplog.set_level(logging.WARNING, logger="crm.grpc")
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await identity_pb2_grpc.IdentityServiceStub(channel).ListRoles(
                    ipb.ListRolesRequest(), timeout=10
                )
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
        await server.stop(0)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value
    assert "infrastructure unavailable" in caplog.text and "unhandled error" not in caplog.text
