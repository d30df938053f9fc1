"""Accounts through the customers gRPC API: create, read, list, update, recycle bin, history, hierarchy."""

from __future__ import annotations

import grpc
from crm.customers.v1 import customers_pb2 as pb
from google.protobuf import field_mask_pb2

from tests.customers.helpers import credit_code, new_account, rpc_error, sign_up


async def test_an_account_keeps_its_business_registration_and_normal_forms(identity, customers):
    company = await sign_up(identity)
    err = await rpc_error(
        customers.CreateAccount(
            pb.CreateAccountRequest(
                account=pb.Account(
                    name="", registered_capital="1.234", phones=["no phone"], credit_code="123"
                )
            ),
            metadata=company.md,
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    for field in ("name", "registered_capital", "phones[0]", "credit_code"):
        assert field in err.details()

    account = await new_account(
        customers,
        company,
        "深圳市华为技术有限公司",
        credit_code=credit_code(1).lower(),
        legal_representative="赵明路",
        registered_capital="4034113182.00",
        phones=["138 0013 8000"],
        emails=["Sales@Huawei.COM"],
        lifecycle_stage=pb.LIFECYCLE_STAGE_CUSTOMER,
        size=pb.COMPANY_SIZE_ENTERPRISE,
        province="广东省",
        city="深圳市",
        tags=["VIP", "VIP", "通信"],
    )
    assert account.credit_code == credit_code(1)
    assert account.registered_capital == "4034113182.00"
    assert account.registered_capital_currency == "CNY"
    assert account.owner_id == company.admin.id
    assert account.tags == ["VIP", "通信"]
    assert account.version == 1

    got = (await customers.GetAccount(pb.GetAccountRequest(id=account.id), metadata=company.md)).account
    assert got == account


async def test_another_tenants_account_is_not_found(identity, customers):
    mine, theirs = await sign_up(identity), await sign_up(identity, "腾讯")
    account = await new_account(customers, mine)
    for call in (
        customers.GetAccount(pb.GetAccountRequest(id=account.id), metadata=theirs.md),
        customers.UpdateAccount(
            pb.UpdateAccountRequest(
                id=account.id,
                account=pb.Account(name="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            ),
            metadata=theirs.md,
        ),
        customers.DeleteAccount(pb.DeleteAccountRequest(id=account.id), metadata=theirs.md),
        customers.GetAccountTree(pb.GetAccountTreeRequest(id=account.id), metadata=theirs.md),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
    listed = await customers.ListAccounts(pb.ListAccountsRequest(), metadata=theirs.md)
    assert account.id not in [a.id for a in listed.items]
