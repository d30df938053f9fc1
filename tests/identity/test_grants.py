"""Nobody gives access they do not hold: not to themselves, not through a key, not through an invitation."""

import uuid

import grpc
from crm.identity.v1 import identity_pb2 as pb
from crm_kit.errors import from_rpc_error
from google.protobuf import field_mask_pb2
from google.protobuf.descriptor import FieldDescriptor

from tests.identity.helpers import auth, invite_and_join, rpc_error, sign_up, unique_email

SERVICE = pb.DESCRIPTOR.services_by_name["IdentityService"]
GRANT_FIELDS = {"role_ids", "permissions"}


def _grants(message, seen=()) -> bool:
    """Does this message (or one it holds) carry roles or permissions?"""
    for field in message.fields:
        if field.name in GRANT_FIELDS:
            return True
        if (
            field.type == FieldDescriptor.TYPE_MESSAGE
            and field.message_type.full_name.startswith("crm.")
            and field.message_type.full_name not in seen
            and _grants(field.message_type, (*seen, message.full_name))
        ):
            return True
    return False


GRANTING_RPCS = {m.name for m in SERVICE.methods if _grants(m.input_type)}


async def _role(identity, company, permissions) -> pb.Role:
    return (
        await identity.CreateRole(
            pb.CreateRoleRequest(name=f"r{uuid.uuid4().hex[:12]}", permissions=permissions),
            metadata=company.md,
        )
    ).role


async def _admin_role(identity, company) -> pb.Role:
    return next(
        r for r in (await identity.ListRoles(pb.ListRolesRequest(), metadata=company.md)).items if r.built_in
    )


def _perm(obj, actions, scope=pb.DATA_SCOPE_ALL, **rules) -> pb.Permission:
    return pb.Permission(
        object=obj,
        actions=actions,
        data_scope=scope,
        field_rules=[pb.FieldRule(field=f, access=a) for f, a in rules.items()],
    )


def _reason(err) -> str:
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
    return from_rpc_error(err).reason


# ---------------------------------------------------------------- the three reported attacks


async def test_user_update_cannot_make_anyone_administrator_nor_change_own_roles(identity):
    company = await sign_up(identity)
    admin_role = await _admin_role(identity, company)
    manager_role = await _role(identity, company, [_perm("user", ["read", "update"])])
    me, token = await invite_and_join(identity, company, role_ids=[manager_role.id])
    friend, _ = await invite_and_join(identity, company)
    md = auth(token.access_token)
    mask = field_mask_pb2.FieldMask(paths=["role_ids"])

    own = await rpc_error(
        identity.UpdateUser(
            pb.UpdateUserRequest(
                id=me.id, user=pb.User(role_ids=[manager_role.id, admin_role.id]), update_mask=mask
            ),
            metadata=md,
        )
    )
    assert _reason(own) == "own_roles"
    other = await rpc_error(
        identity.UpdateUser(
            pb.UpdateUserRequest(id=friend.id, user=pb.User(role_ids=[admin_role.id]), update_mask=mask),
            metadata=md,
        )
    )
    assert _reason(other) == "administrator_only"
    # Not even the administrator changes their own roles (nor locks themselves out by mistake).
    admin_own = await rpc_error(
        identity.UpdateUser(
            pb.UpdateUserRequest(id=company.admin.id, user=pb.User(role_ids=[]), update_mask=mask),
            metadata=company.md,
        )
    )
    assert _reason(admin_own) == "own_roles"
    for user in (me, friend):
        current = (await identity.GetUser(pb.GetUserRequest(id=user.id), metadata=company.md)).user
        assert admin_role.id not in current.role_ids


async def test_api_key_create_cannot_mint_a_key_wider_than_its_creator(identity):
    company = await sign_up(identity)
    admin_role = await _admin_role(identity, company)
    integrator = await _role(identity, company, [_perm("api_key", ["create", "read"])])
    everything = await _role(identity, company, [_perm("*", ["*"])])
    _, token = await invite_and_join(identity, company, role_ids=[integrator.id])
    md = auth(token.access_token)
    err = await rpc_error(
        identity.CreateApiKey(pb.CreateApiKeyRequest(name="k", role_ids=[admin_role.id]), metadata=md)
    )
    assert _reason(err) == "administrator_only"
    err = await rpc_error(
        identity.CreateApiKey(pb.CreateApiKeyRequest(name="k", role_ids=[everything.id]), metadata=md)
    )
    assert _reason(err) == "grant_exceeds_own_access"
    assert not (await identity.ListApiKeys(pb.ListApiKeysRequest(), metadata=company.md)).items
    # Within their own access, they still can.
    ok = await identity.CreateApiKey(pb.CreateApiKeyRequest(name="k", role_ids=[integrator.id]), metadata=md)
    assert list(ok.api_key.role_ids) == [integrator.id]


async def test_user_create_cannot_invite_an_administrator_or_a_wider_user(identity):
    company = await sign_up(identity)
    admin_role = await _admin_role(identity, company)
    recruiter = await _role(identity, company, [_perm("user", ["create", "read"], pb.DATA_SCOPE_OWN)])
    wider = await _role(identity, company, [_perm("user", ["create", "read"], pb.DATA_SCOPE_ALL)])
    _, token = await invite_and_join(identity, company, role_ids=[recruiter.id])
    md = auth(token.access_token)
    mine = unique_email("mine")
    for role, reason in ((admin_role, "administrator_only"), (wider, "grant_exceeds_own_access")):
        err = await rpc_error(
            identity.CreateUser(pb.CreateUserRequest(email=mine, name="x", role_ids=[role.id]), metadata=md)
        )
        assert _reason(err) == reason
    ok = await identity.CreateUser(
        pb.CreateUserRequest(email=mine, name="x", role_ids=[recruiter.id]), metadata=md
    )
    assert list(ok.user.role_ids) == [recruiter.id]


# ---------------------------------------------------------------- the class: every RPC that grants


# The caller's own access besides the RPC's permission: contacts of their department, phone hidden, email
# read-only. Each widening below goes beyond it in exactly one way.
OWN_CONTACTS = _perm(
    "contact",
    ["read", "update"],
    pb.DATA_SCOPE_DEPARTMENT,
    phone=pb.FIELD_ACCESS_HIDDEN,
    email=pb.FIELD_ACCESS_READ_ONLY,
)
WIDENINGS = {
    "another action": [
        _perm(
            "contact",
            ["read", "delete"],
            pb.DATA_SCOPE_DEPARTMENT,
            phone=pb.FIELD_ACCESS_HIDDEN,
            email=pb.FIELD_ACCESS_READ_ONLY,
        )
    ],
    "every action": [
        _perm(
            "contact",
            ["*"],
            pb.DATA_SCOPE_DEPARTMENT,
            phone=pb.FIELD_ACCESS_HIDDEN,
            email=pb.FIELD_ACCESS_READ_ONLY,
        )
    ],
    "a wider scope": [
        _perm(
            "contact",
            ["read"],
            pb.DATA_SCOPE_DEPARTMENT_TREE,
            phone=pb.FIELD_ACCESS_HIDDEN,
            email=pb.FIELD_ACCESS_READ_ONLY,
        )
    ],
    "a hidden field": [_perm("contact", ["read"], pb.DATA_SCOPE_DEPARTMENT, email=pb.FIELD_ACCESS_READ_ONLY)],
    "a read-only field": [
        _perm("contact", ["update"], pb.DATA_SCOPE_DEPARTMENT, phone=pb.FIELD_ACCESS_HIDDEN)
    ],
    "another object": [_perm("account", ["read"], pb.DATA_SCOPE_OWN)],
    "every object": [_perm("*", ["read"], pb.DATA_SCOPE_OWN)],
}

# RPC → (the permission it needs, how a caller holding it would grant `role_ids` / `permissions`).
# Each attempt returns the call; `own_role` is the caller's role, `victim` a plain user, `me` the caller.


def _invite(ctx, role_ids, permissions):
    return ctx.identity.CreateUser(
        pb.CreateUserRequest(email=unique_email(), name="x", role_ids=role_ids), metadata=ctx.md
    )


def _update_user(ctx, role_ids, permissions):
    return ctx.identity.UpdateUser(
        pb.UpdateUserRequest(
            id=ctx.victim.id,
            user=pb.User(role_ids=role_ids),
            update_mask=field_mask_pb2.FieldMask(paths=["role_ids"]),
        ),
        metadata=ctx.md,
    )


def _create_key(ctx, role_ids, permissions):
    return ctx.identity.CreateApiKey(pb.CreateApiKeyRequest(name="k", role_ids=role_ids), metadata=ctx.md)


def _create_role(ctx, role_ids, permissions):
    return ctx.identity.CreateRole(
        pb.CreateRoleRequest(name=f"r{uuid.uuid4().hex[:12]}", permissions=permissions), metadata=ctx.md
    )


def _update_own_role(ctx, role_ids, permissions):
    # Editing the role the caller holds is the shortest way to widen one's own access.
    return ctx.identity.UpdateRole(
        pb.UpdateRoleRequest(
            id=ctx.own_role.id,
            role=pb.Role(permissions=permissions),
            update_mask=field_mask_pb2.FieldMask(paths=["permissions"]),
        ),
        metadata=ctx.md,
    )


ATTEMPTS = {
    "CreateUser": (_perm("user", ["create"]), _invite),
    "UpdateUser": (_perm("user", ["update"]), _update_user),
    "CreateApiKey": (_perm("api_key", ["create"]), _create_key),
    "CreateRole": (_perm("role", ["create"]), _create_role),
    "UpdateRole": (_perm("role", ["update"]), _update_own_role),
}


class _Ctx:
    pass


def test_every_rpc_that_takes_roles_or_permissions_is_walked():
    assert GRANTING_RPCS == set(ATTEMPTS), "a new RPC grants roles or permissions: add it to ATTEMPTS"


async def test_no_rpc_lets_a_non_admin_give_more_than_they_hold(identity):
    company = await sign_up(identity)
    admin_role = await _admin_role(identity, company)
    dept = (
        await identity.CreateDepartment(pb.CreateDepartmentRequest(name="销售部"), metadata=company.md)
    ).department
    widening_roles = {name: await _role(identity, company, perms) for name, perms in WIDENINGS.items()}
    for rpc, (needed, attempt) in sorted(ATTEMPTS.items()):
        ctx = _Ctx()
        ctx.identity = identity
        own_perms = [needed, OWN_CONTACTS]
        ctx.own_role = await _role(identity, company, own_perms)
        me, token = await invite_and_join(
            identity, company, role_ids=[ctx.own_role.id], department_id=dept.id
        )
        ctx.victim, _ = await invite_and_join(identity, company)
        ctx.md = auth(token.access_token)
        before = (await identity.GetMe(pb.GetMeRequest(), metadata=ctx.md)).permissions

        err = await rpc_error(attempt(ctx, [admin_role.id], list(admin_role.permissions)))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (rpc, "administrator")
        for name, perms in WIDENINGS.items():
            err = await rpc_error(attempt(ctx, [widening_roles[name].id], perms + own_perms[:1]))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (rpc, name, err.details())
            assert from_rpc_error(err).reason == "grant_exceeds_own_access", (rpc, name)
        # What they hold, they may pass on: the rule refuses widening, not the RPC.
        await attempt(ctx, [ctx.own_role.id], own_perms)

        fresh = (
            await identity.CreateToken(
                pb.CreateTokenRequest(email=me.email, password="correct horse battery")
            )
        ).token
        after = (await identity.GetMe(pb.GetMeRequest(), metadata=auth(fresh.access_token))).permissions
        assert list(after) == list(before), rpc
        role_now = (await identity.GetRole(pb.GetRoleRequest(id=ctx.own_role.id), metadata=company.md)).role
        assert list(role_now.permissions) == list(ctx.own_role.permissions), rpc
