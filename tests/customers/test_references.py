"""A customer record's references name what exists in the caller's company: its owner and the people on its
team (users), its parent (an account), a contact's accounts; a made-up id or another company's is a 422
naming the field."""

from __future__ import annotations

import uuid

import grpc
from crm.customers.v1 import customers_pb2 as pb
from crm_kit.errors import from_rpc_error
from google.protobuf import field_mask_pb2

from tests.customers.helpers import invite_and_join, new_account, rpc_error, sign_up


async def _refused(call, *fields: str) -> None:
    err = await rpc_error(call)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
    assert [f.field for f in from_rpc_error(err).field_errors] == list(fields), err.details()


async def test_an_accounts_team_owner_and_parent_and_a_contacts_accounts_exist(identity, customers):
    company = await sign_up(identity, "武汉江城光电有限公司")
    other = await sign_up(identity, "长沙星城光电有限公司")
    colleague, _ = await invite_and_join(identity, company)
    stranger, _ = await invite_and_join(identity, other)
    theirs = await new_account(customers, other, "长沙星城光电有限公司")
    made_up = str(uuid.uuid4())
    for bad in (made_up, stranger.id):
        await _refused(
            customers.CreateAccount(
                pb.CreateAccountRequest(
                    account=pb.Account(name="武汉江城光电", team_member_ids=[colleague.id, bad])
                ),
                metadata=company.md,
            ),
            "team_member_ids[1]",
        )
        await _refused(
            customers.CreateAccount(
                pb.CreateAccountRequest(account=pb.Account(name="武汉江城光电", owner_id=bad)),
                metadata=company.md,
            ),
            "owner_id",
        )
    for bad in (made_up, theirs.id):
        await _refused(
            customers.CreateAccount(
                pb.CreateAccountRequest(account=pb.Account(name="武汉江城光电", parent_id=bad)),
                metadata=company.md,
            ),
            "parent_id",
        )
        await _refused(
            customers.CreateContact(
                pb.CreateContactRequest(contact=pb.Contact(name="周杰", account_ids=[bad])),
                metadata=company.md,
            ),
            "account_ids[0]",
        )
    account = await new_account(customers, company, "武汉江城光电有限公司", team_member_ids=[colleague.id])
    assert list(account.team_member_ids) == [colleague.id]
    await _refused(
        customers.UpdateAccount(
            pb.UpdateAccountRequest(
                id=account.id,
                account=pb.Account(team_member_ids=[colleague.id, stranger.id]),
                update_mask=field_mask_pb2.FieldMask(paths=["team_member_ids"]),
            ),
            metadata=company.md,
        ),
        "team_member_ids[1]",
    )
