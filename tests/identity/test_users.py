import grpc
from crm.identity.v1 import events_pb2
from crm.identity.v1 import identity_pb2 as pb
from crm_kit.errors import from_rpc_error
from crm_kit.testing import recorded_events
from google.protobuf import field_mask_pb2

from tests.identity.helpers import PASSWORD, invite_and_join, rpc_error, sign_up, unique_email


async def test_an_invited_user_signs_in_only_after_accepting_the_invitation(identity, identity_service):
    company = await sign_up(identity)
    email = unique_email()
    invited = await identity.CreateUser(pb.CreateUserRequest(email=email, name="韩梅梅"), metadata=company.md)
    token = invited.user.invitation_token
    assert invited.user.status == pb.USER_STATUS_INVITED and token
    # The token is in the invitation's answer only: not in reads, lists or the event others receive.
    got = await identity.GetUser(pb.GetUserRequest(id=invited.user.id), metadata=company.md)
    assert got.user.id == invited.user.id and not got.user.invitation_token
    listed = await identity.ListUsers(pb.ListUsersRequest(), metadata=company.md)
    assert invited.user.id in [u.id for u in listed.items] and token not in str(listed)
    [event] = await recorded_events(identity_service.runtime.db, invited.user.id)
    payload = events_pb2.UserInvited()
    assert event.payload.Unpack(payload) and payload.user.id == invited.user.id
    assert not payload.user.invitation_token and token not in event.SerializeToString().decode("latin-1")
    err = await rpc_error(identity.CreateToken(pb.CreateTokenRequest(email=email, password=PASSWORD)))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED

    accepted = await identity.AcceptInvitation(
        pb.AcceptInvitationRequest(invitation_token=invited.user.invitation_token, password=PASSWORD)
    )
    assert accepted.user.status == pb.USER_STATUS_ACTIVE
    assert (
        await identity.CreateToken(pb.CreateTokenRequest(email=email, password=PASSWORD))
    ).token.access_token
    again = await rpc_error(
        identity.AcceptInvitation(
            pb.AcceptInvitationRequest(invitation_token=invited.user.invitation_token, password=PASSWORD)
        )
    )
    assert from_rpc_error(again).reason == "invalid_invitation"


async def test_another_companys_user_is_not_found(identity):
    a = await sign_up(identity)
    b = await sign_up(identity, "阿里巴巴")
    err = await rpc_error(identity.GetUser(pb.GetUserRequest(id=b.admin.id), metadata=a.md))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    listed = await identity.ListUsers(pb.ListUsersRequest(), metadata=a.md)
    assert [u.id for u in listed.items] == [a.admin.id]
    for bad_id in ["not-a-uuid", "x" * 500]:
        assert (
            await rpc_error(identity.GetUser(pb.GetUserRequest(id=bad_id), metadata=a.md))
        ).code() == grpc.StatusCode.NOT_FOUND


async def test_a_stale_version_changes_nothing(identity):
    company = await sign_up(identity)
    joined, _ = await invite_and_join(identity, company)
    user = (await identity.GetUser(pb.GetUserRequest(id=joined.id), metadata=company.md)).user
    mask = field_mask_pb2.FieldMask(paths=["title"])
    updated = await identity.UpdateUser(
        pb.UpdateUserRequest(
            id=user.id, expected_version=user.version, user=pb.User(title="销售经理"), update_mask=mask
        ),
        metadata=company.md,
    )
    assert updated.user.title == "销售经理" and updated.user.version == user.version + 1
    stale = await rpc_error(
        identity.UpdateUser(
            pb.UpdateUserRequest(
                id=user.id, expected_version=user.version, user=pb.User(title="x"), update_mask=mask
            ),
            metadata=company.md,
        )
    )
    assert stale.code() == grpc.StatusCode.ABORTED
    current = await identity.GetUser(pb.GetUserRequest(id=user.id), metadata=company.md)
    assert current.user.title == "销售经理"


async def test_roles_and_departments_of_another_company_cannot_be_assigned(identity):
    a = await sign_up(identity)
    b = await sign_up(identity, "腾讯")
    b_role = next(
        r for r in (await identity.ListRoles(pb.ListRolesRequest(), metadata=b.md)).items if r.built_in
    )
    err = await rpc_error(
        identity.CreateUser(
            pb.CreateUserRequest(email=unique_email(), name="x", role_ids=[b_role.id]), metadata=a.md
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f.field for f in from_rpc_error(err).field_errors] == ["role_ids"]


async def test_a_deactivated_user_can_neither_sign_in_nor_refresh(identity):
    company = await sign_up(identity)
    user, token = await invite_and_join(identity, company)
    await identity.DeactivateUser(pb.DeactivateUserRequest(id=user.id), metadata=company.md)
    err = await rpc_error(identity.CreateToken(pb.CreateTokenRequest(email=user.email, password=PASSWORD)))
    assert from_rpc_error(err).reason == "account_inactive"
    err = await rpc_error(identity.RefreshToken(pb.RefreshTokenRequest(refresh_token=token.refresh_token)))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    own = await rpc_error(
        identity.DeactivateUser(pb.DeactivateUserRequest(id=company.admin.id), metadata=company.md)
    )
    assert own.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_user_without_a_role_may_not_manage_users_and_hidden_fields_stay_hidden(identity):
    company = await sign_up(identity)
    _plain, plain_token = await invite_and_join(identity, company)
    md = (("authorization", f"Bearer {plain_token.access_token}"),)
    err = await rpc_error(identity.ListUsers(pb.ListUsersRequest(), metadata=md))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED

    reader = (
        await identity.CreateRole(
            pb.CreateRoleRequest(
                name="目录查看",
                permissions=[
                    pb.Permission(
                        object="user",
                        actions=["read"],
                        data_scope=pb.DATA_SCOPE_ALL,
                        field_rules=[pb.FieldRule(field="phone", access=pb.FIELD_ACCESS_HIDDEN)],
                    )
                ],
            ),
            metadata=company.md,
        )
    ).role
    await identity.UpdateUser(
        pb.UpdateUserRequest(
            id=company.admin.id,
            user=pb.User(phone="13800138000"),
            update_mask=field_mask_pb2.FieldMask(paths=["phone"]),
        ),
        metadata=company.md,
    )
    _, token = await invite_and_join(identity, company, role_ids=[reader.id])
    md = (("authorization", f"Bearer {token.access_token}"),)
    seen = await identity.GetUser(pb.GetUserRequest(id=company.admin.id), metadata=md)
    assert seen.user.name == company.admin.name and seen.user.phone == ""
    admin_view = await identity.GetUser(pb.GetUserRequest(id=company.admin.id), metadata=company.md)
    assert admin_view.user.phone == "13800138000"
    denied = await rpc_error(
        identity.UpdateUser(
            pb.UpdateUserRequest(
                id=company.admin.id,
                user=pb.User(title="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["title"]),
            ),
            metadata=md,
        )
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_user_lists_page_by_cursor_without_gaps_or_repeats(identity):
    company = await sign_up(identity)
    for _ in range(5):
        await identity.CreateUser(
            pb.CreateUserRequest(email=unique_email(), name="成员"), metadata=company.md
        )
    seen, cursor = [], ""
    while True:
        page = await identity.ListUsers(
            pb.ListUsersRequest(page={"limit": 2, "cursor": cursor}), metadata=company.md
        )
        seen += [u.id for u in page.items]
        assert len(page.items) <= 2
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert len(seen) == 6 == len(set(seen))
    bad = await rpc_error(identity.ListUsers(pb.ListUsersRequest(page={"limit": 500}), metadata=company.md))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
