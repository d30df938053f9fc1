"""A crafted cursor is a 422 on the field "cursor", never a 500: every list RPC of every service, found by
walking the services' descriptors (each method whose request has a `crm.common.v1.PageRequest`), gets random
base64, base64 of junk JSON, deep and huge cursors, real cursors of other lists, and real cursors whose values
were swapped for values of the wrong type."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

import grpc
from crm.customers.v1 import customers_pb2 as cpb
from crm.customers.v1 import customers_pb2_grpc
from crm.identity.v1 import identity_pb2 as ipb
from crm.sales.v1 import leads_pb2 as lpb
from crm.sales.v1 import leads_pb2_grpc
from crm_kit.errors import from_rpc_error
from google.protobuf import descriptor_pool
from google.protobuf.message_factory import GetMessageClass

from tests.identity.helpers import sign_up

PAGE_REQUEST = "crm.common.v1.PageRequest"


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _list_methods(service) -> list[tuple[str, Any, Any]]:
    """(address, method descriptor, PageRequest field) of every list RPC a running service serves."""
    pool = descriptor_pool.Default()
    out = []
    for name in service.server.names:
        for method in pool.FindServiceByName(name).methods:
            for f in method.input_type.fields:
                if f.message_type is not None and f.message_type.full_name == PAGE_REQUEST:
                    out.append((service.address, method, f))
    return out


def _tampered(cursor: str) -> list[str]:
    """A real cursor with each of its values replaced by values of other types (or text no column takes)."""
    values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    wrong: list[Any] = [
        12345678901234567890123,
        -7,
        1.5,
        True,
        {"id": 1},
        ["x"],
        "nul\u0000byte",
        "x" * 5000,
    ]
    out = []
    for i in range(1, len(values)):
        for bad in wrong:
            changed = list(values)
            changed[i] = bad
            out.append(_b64(json.dumps(changed)))
    out.append(_b64(json.dumps(values[1:])))  # without its tag
    out.append(_b64(json.dumps([*values, "extra"])))
    return out


async def test_every_list_rpc_answers_crafted_cursors_with_a_422_on_the_cursor_never_a_500(
    identity, identity_service, customers_for_sales, sales_service
):
    company = await sign_up(identity, "游标测试有限公司")
    md = company.md
    async with (
        grpc.aio.insecure_channel(customers_for_sales.address) as customers_channel,
        grpc.aio.insecure_channel(sales_service.address) as sales_channel,
    ):
        customers = customers_pb2_grpc.CustomersServiceStub(customers_channel)
        leads = leads_pb2_grpc.LeadsServiceStub(sales_channel)
        for name in ("北京甲公司", "上海乙公司"):
            await identity.CreateRole(
                ipb.CreateRoleRequest(
                    name=name,
                    permissions=[ipb.Permission(object="lead", actions=["read"], data_scope=ipb.DATA_SCOPE_ALL)],
                ),
                metadata=md,
            )
            await customers.CreateAccount(cpb.CreateAccountRequest(account=cpb.Account(name=name)), metadata=md)
            await leads.CreateLead(lpb.CreateLeadRequest(name="张三", company=name), metadata=md)
        # Real cursors of three lists: each is foreign to every other list, and tampered with for its own.
        real = {
            "ListAccounts": (
                await customers.ListAccounts(cpb.ListAccountsRequest(page={"limit": 1}), metadata=md)
            ).next_cursor,
            "ListLeads": (
                await leads.ListLeads(lpb.ListLeadsRequest(page={"limit": 1}), metadata=md)
            ).next_cursor,
            "ListRoles": (
                await identity.ListRoles(ipb.ListRolesRequest(page={"limit": 1}), metadata=md)
            ).next_cursor,
        }
        assert all(real.values()), real

    crafted = {
        "random base64": _b64(os.urandom(48)),
        "not base64": "%%%-not-base64-%%%",
        "junk JSON object": _b64('{"a": 1}'),
        "JSON string": _b64('"id"'),
        "JSON null": _b64("null"),
        "empty list": _b64("[]"),
        "deep JSON": _b64("[" * 700 + "]" * 700),
        "very deep JSON": _b64("[" * 50_000 + "]" * 50_000),
        "huge": "A" * 200_000,
    }
    for i, cursor in enumerate(_tampered(real["ListLeads"]) + _tampered(real["ListAccounts"])):
        crafted[f"tampered #{i}"] = cursor
    for method, cursor in real.items():
        crafted[f"from {method}"] = cursor
        for i, bad in enumerate(_tampered(cursor)):
            crafted[f"tampered {method} #{i}"] = bad

    methods = [m for s in (identity_service, customers_for_sales, sales_service) for m in _list_methods(s)]
    assert len(methods) >= 30, [m.full_name for _, m, _ in methods]  # the walk found the lists
    probed = 0
    failures: list[str] = []
    channels = {addr: grpc.aio.insecure_channel(addr) for addr in {a for a, _, _ in methods}}
    try:
        for address, method, page_field in methods:
            cls = GetMessageClass(method.input_type)
            out_cls = GetMessageClass(method.output_type)
            path = f"/{method.containing_service.full_name}/{method.name}"
            if method.server_streaming:
                call = channels[address].unary_stream(
                    path, request_serializer=cls.SerializeToString, response_deserializer=out_cls.FromString
                )
            else:
                call = channels[address].unary_unary(
                    path, request_serializer=cls.SerializeToString, response_deserializer=out_cls.FromString
                )

            async def ask(cursor: str, call=call, cls=cls, page_field=page_field) -> grpc.StatusCode | Any:
                request = cls()
                getattr(request, page_field.name).cursor = cursor
                try:
                    answer = call(request, metadata=md, timeout=30)
                    if hasattr(answer, "__aiter__"):
                        async for _ in answer:
                            pass
                    else:
                        await answer
                except grpc.aio.AioRpcError as exc:
                    return exc
                return grpc.StatusCode.OK

            baseline = await ask("")
            reaches_cursor = baseline == grpc.StatusCode.OK
            probed += reaches_cursor
            for label, cursor in crafted.items():
                if label == f"from {method.name}":
                    continue  # its own real cursor
                result = await ask(cursor)
                if result == grpc.StatusCode.OK:
                    if reaches_cursor:
                        failures.append(f"{method.full_name} accepted {label}")
                    continue
                if result.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                    failures.append(f"{method.full_name} {label}: {result.code()} {result.details()}")
                elif reaches_cursor:
                    details = from_rpc_error(result)
                    if result.code() != grpc.StatusCode.INVALID_ARGUMENT or "cursor" not in [
                        f.field for f in details.field_errors
                    ]:
                        failures.append(f"{method.full_name} {label}: {result.code()} {details.message}")
            await asyncio.sleep(0)
    finally:
        for channel in channels.values():
            await channel.close()
    assert not failures, "\n".join(failures[:60])
    # Most lists answer a request without ids, so their cursor handling was reached, not a 404 before it.
    assert probed >= len(methods) // 2, probed
