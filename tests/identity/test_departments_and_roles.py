import grpc
from crm.identity.v1 import identity_pb2 as pb
from crm_kit.errors import from_rpc_error
from google.protobuf import field_mask_pb2

from tests.identity.helpers import invite_and_join, rpc_error, sign_up


async def _dept(identity, company, name, parent=""):
    return (
        await identity.CreateDepartment(
            pb.CreateDepartmentRequest(name=name, parent_id=parent), metadata=company.md
        )
    ).department


async def test_departments_form_a_tree_that_cannot_become_a_cycle(identity):
    company = await sign_up(identity)
    group = await _dept(identity, company, "集团")
    sales = await _dept(identity, company, "销售部", group.id)
    east = await _dept(identity, company, "华东区", sales.id)
    children = await identity.ListDepartments(
        pb.ListDepartmentsRequest(parent_id=sales.id), metadata=company.md
    )
    assert [d.id for d in children.items] == [east.id]
    err = await rpc_error(
        identity.UpdateDepartment(
            pb.UpdateDepartmentRequest(
                id=group.id,
                department=pb.Department(parent_id=east.id),
                update_mask=field_mask_pb2.FieldMask(paths=["parent_id"]),
            ),
            metadata=company.md,
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f.field for f in from_rpc_error(err).field_errors] == ["parent_id"]
    dup = await rpc_error(
        identity.CreateDepartment(
            pb.CreateDepartmentRequest(name="华东区", parent_id=sales.id), metadata=company.md
        )
    )
    assert dup.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_a_department_with_members_or_children_cannot_be_deleted(identity):
    company = await sign_up(identity)
    parent = await _dept(identity, company, "市场部")
    child = await _dept(identity, company, "品牌组", parent.id)
    err = await rpc_error(
        identity.DeleteDepartment(pb.DeleteDepartmentRequest(id=parent.id), metadata=company.md)
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    await invite_and_join(identity, company, department_id=child.id)
    err = await rpc_error(
        identity.DeleteDepartment(pb.DeleteDepartmentRequest(id=child.id), metadata=company.md)
    )
    assert from_rpc_error(err).reason == "department_not_empty"
    empty = await _dept(identity, company, "临时组")
    await identity.DeleteDepartment(pb.DeleteDepartmentRequest(id=empty.id), metadata=company.md)
    gone = await rpc_error(identity.GetDepartment(pb.GetDepartmentRequest(id=empty.id), metadata=company.md))
    assert gone.code() == grpc.StatusCode.NOT_FOUND


async def test_role_permissions_are_validated_and_the_admin_role_is_protected(identity):
    company = await sign_up(identity)
    err = await rpc_error(
        identity.CreateRole(
            pb.CreateRoleRequest(name="bad", permissions=[pb.Permission(object="Account!", actions=["fly"])]),
            metadata=company.md,
        )
    )
    fields = {f.field for f in from_rpc_error(err).field_errors}
    assert fields == {"permissions[0].object", "permissions[0].actions"}
    roles = (await identity.ListRoles(pb.ListRolesRequest(), metadata=company.md)).items
    admin_role = next(r for r in roles if r.built_in)
    err = await rpc_error(identity.DeleteRole(pb.DeleteRoleRequest(id=admin_role.id), metadata=company.md))
    assert from_rpc_error(err).reason == "built_in_role"


async def test_a_role_in_use_cannot_be_deleted_and_scope_defaults_to_own(identity):
    company = await sign_up(identity)
    role = (
        await identity.CreateRole(
            pb.CreateRoleRequest(
                name="客户代表", permissions=[pb.Permission(object="account", actions=["read", "update"])]
            ),
            metadata=company.md,
        )
    ).role
    assert role.permissions[0].data_scope == pb.DATA_SCOPE_OWN
    await invite_and_join(identity, company, role_ids=[role.id])
    err = await rpc_error(identity.DeleteRole(pb.DeleteRoleRequest(id=role.id), metadata=company.md))
    assert from_rpc_error(err).reason == "role_in_use"


async def test_the_policy_other_services_cache_holds_roles_and_the_department_tree(identity):
    company = await sign_up(identity)
    d = await _dept(identity, company, "研发部")
    policy = (await identity.GetPolicy(pb.GetPolicyRequest(), metadata=company.md)).policy
    assert policy.tenant_id == company.tenant.id
    assert [dep.id for dep in policy.departments] == [d.id]
    # The built-in administrator first, then the usual roles every new company starts with.
    assert policy.roles[0].built_in
    assert not any(r.built_in for r in policy.roles[1:])


async def test_deleting_with_a_stale_version_changes_nothing(identity):
    company = await sign_up(identity)
    dept = await _dept(identity, company, "销售二部")
    await identity.UpdateDepartment(
        pb.UpdateDepartmentRequest(
            id=dept.id, department=pb.Department(name="销售三部"), update_mask={"paths": ["name"]}
        ),
        metadata=company.md,
    )
    stale = await rpc_error(
        identity.DeleteDepartment(
            pb.DeleteDepartmentRequest(id=dept.id, expected_version=dept.version), metadata=company.md
        )
    )
    assert stale.code() == grpc.StatusCode.ABORTED
    still = await identity.GetDepartment(pb.GetDepartmentRequest(id=dept.id), metadata=company.md)
    assert still.department.name == "销售三部"
