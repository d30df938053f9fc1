"""A write retried with the same idempotency key happens once, even when the first answer never arrived."""

import uuid

import asyncpg
import grpc
from crm.identity.v1 import identity_pb2 as pb
from crm_kit.errors import from_rpc_error

from tests.identity.helpers import PASSWORD, rpc_error, sign_up, unique_email


def keyed(company, key):
    return (*company.md, ("idempotency-key", key))


async def test_a_retried_write_is_answered_from_the_first_attempt_and_creates_one_object(identity):
    company = await sign_up(identity)
    key = uuid.uuid4().hex
    first = await identity.CreateDepartment(
        pb.CreateDepartmentRequest(name="华北区"), metadata=keyed(company, key)
    )
    again = await identity.CreateDepartment(
        pb.CreateDepartmentRequest(name="华北区"), metadata=keyed(company, key)
    )
    assert again.department.id == first.department.id
    listed = await identity.ListDepartments(pb.ListDepartmentsRequest(), metadata=company.md)
    assert [d.id for d in listed.items] == [first.department.id]


async def test_a_write_whose_answer_was_lost_is_not_done_twice(identity, identity_service, test_infra):
    company = await sign_up(identity)
    key = uuid.uuid4().hex
    await identity.CreateDepartment(pb.CreateDepartmentRequest(name="西南区"), metadata=keyed(company, key))
    # As if the replica died after its commit and before it stored its answer.
    conn = await asyncpg.connect(test_infra.asyncpg_dsn(identity_service.settings.database_url))
    try:
        await conn.execute("UPDATE idempotent_requests SET response = NULL")
    finally:
        await conn.close()
    err = await rpc_error(
        identity.CreateDepartment(pb.CreateDepartmentRequest(name="西南区"), metadata=keyed(company, key))
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert from_rpc_error(err).reason == "already_applied"
    listed = await identity.ListDepartments(pb.ListDepartmentsRequest(), metadata=company.md)
    assert len(listed.items) == 1


async def test_a_key_cannot_be_reused_for_another_request(identity):
    company = await sign_up(identity)
    key = uuid.uuid4().hex
    await identity.CreateDepartment(pb.CreateDepartmentRequest(name="东北区"), metadata=keyed(company, key))
    err = await rpc_error(
        identity.CreateRole(pb.CreateRoleRequest(name="临时"), metadata=keyed(company, key))
    )
    assert from_rpc_error(err).reason == "idempotency_key_reused"


async def test_a_failed_call_that_committed_something_may_run_again(identity):
    company = await sign_up(identity)
    key = uuid.uuid4().hex
    md = (("idempotency-key", key),)
    wrong = pb.CreateTokenRequest(email=company.admin.email, password="not the password")
    for _ in range(2):
        err = await rpc_error(identity.CreateToken(wrong, metadata=md))
        assert from_rpc_error(err).reason == "bad_credentials"


async def test_another_request_under_the_same_key_never_gets_the_first_answer(identity):
    """The reported attack at the service: a caller who knows (or guesses) the key of someone's sign-in sends
    their own sign-in under it. The record is matched on the request too, so the first caller's tokens are never
    the answer; the first caller's own retry still is."""
    company = await sign_up(identity)
    md = (("idempotency-key", uuid.uuid4().hex),)
    mine = pb.CreateTokenRequest(email=company.admin.email, password=PASSWORD)
    first = await identity.CreateToken(mine, metadata=md)
    err = await rpc_error(
        identity.CreateToken(pb.CreateTokenRequest(email=unique_email(), password="a guess"), metadata=md)
    )
    assert from_rpc_error(err).reason == "idempotency_key_reused"
    again = await identity.CreateToken(mine, metadata=md)
    assert again.token.access_token == first.token.access_token


async def test_a_key_is_forgotten_after_the_idempotency_ttl_as_at_the_gateway(
    identity, identity_service, test_infra
):
    """Both copies of a key live `idempotency_ttl_seconds` (one setting): a record older than that is never
    replayed, however late pruning removes it."""
    company = await sign_up(identity)
    key = uuid.uuid4().hex
    first = await identity.CreateDepartment(
        pb.CreateDepartmentRequest(name="华东区"), metadata=keyed(company, key)
    )
    ttl = identity_service.settings.idempotency_ttl_seconds
    conn = await asyncpg.connect(test_infra.asyncpg_dsn(identity_service.settings.database_url))
    try:
        await conn.execute(
            "UPDATE idempotent_requests SET created_at = now() - make_interval(secs => $2) WHERE key = $1",
            key,
            ttl + 60.0,
        )
    finally:
        await conn.close()
    again = await identity.CreateDepartment(
        pb.CreateDepartmentRequest(name="华东区二部"), metadata=keyed(company, key)
    )
    assert again.department.id != first.department.id and again.department.name == "华东区二部"
