"""Identity's REST face: sign-up and sign-in, the caller, users, departments, roles, API keys, audit trail.

Only what REST needs beyond the proto is said here; fields, types and schemas come from identity.proto.
"""

from crm.identity.v1 import identity_pb2

from crm_gateway.routing import Route, ServiceRoutes

IDENTITY = ServiceRoutes(
    name="identity",
    service=identity_pb2.DESCRIPTOR.services_by_name["IdentityService"],
    routes=[
        # Sign-up and sign-in: no credential.
        Route(
            "POST",
            "/auth/signup",
            "SignUp",
            status=201,
            public=True,
            summary="Sign up a company (tenant) and its first admin",
        ),
        Route(
            "POST",
            "/auth/token",
            "CreateToken",
            unwrap="token",
            public=True,
            summary="Sign in: trade email and password (and TOTP code) for tokens",
        ),
        Route(
            "POST",
            "/auth/refresh",
            "RefreshToken",
            unwrap="token",
            public=True,
            summary="Trade a refresh token for new tokens (the old one stops working)",
        ),
        Route(
            "POST", "/auth/logout", "RevokeToken", status=204, public=True, summary="Revoke a refresh token"
        ),
        Route(
            "POST",
            "/auth/accept-invitation",
            "AcceptInvitation",
            unwrap="user",
            public=True,
            summary="Set a password with an invitation token",
        ),
        Route(
            "POST",
            "/auth/verify-email",
            "VerifyEmail",
            unwrap="user",
            public=True,
            summary="Prove a signed-up email address with the token mailed to it",
        ),
        Route(
            "POST",
            "/auth/resend-verification",
            "ResendVerificationByEmail",
            status=202,
            public=True,
            summary="Mail a new verification token to an unproven sign-up (same answer whether or not there is one)",
        ),
        Route(
            "GET",
            "/.well-known/jwks.json",
            "GetJwks",
            unwrap="jwks",
            public=True,
            root=True,
            cache_control="public, max-age=300",
            summary="The keys that sign access tokens (JWKS)",
        ),
        # The caller.
        Route("GET", "/me", "GetMe", summary="Who I am, my tenant and my effective permissions"),
        Route(
            "POST",
            "/me/resend-verification",
            "ResendVerification",
            status=202,
            summary="Mail me a new token to verify my address (the earlier one stops working)",
        ),
        Route("POST", "/me/totp", "StartTotpEnrollment", summary="Start two-factor enrolment"),
        Route(
            "POST",
            "/me/totp/confirm",
            "ConfirmTotpEnrollment",
            unwrap="user",
            summary="Confirm two-factor enrolment with a first code",
        ),
        Route(
            "POST", "/me/totp/disable", "DisableTotp", unwrap="user", summary="Turn two-factor sign-in off"
        ),
        # Users.
        Route("POST", "/users", "InviteUser", status=201, location="/users/{user.id}"),
        Route("GET", "/users", "ListUsers", query={"q": "query"}),
        Route("GET", "/users/{id}", "GetUser", unwrap="user"),
        Route(
            "PATCH",
            "/users/{id}",
            "UpdateUser",
            unwrap="user",
            read_only=("status", "totp_enabled", "last_login_at"),
        ),
        Route("POST", "/users/{id}/activate", "ActivateUser", unwrap="user"),
        Route("POST", "/users/{id}/deactivate", "DeactivateUser", unwrap="user"),
        # Departments.
        Route(
            "POST",
            "/departments",
            "CreateDepartment",
            status=201,
            unwrap="department",
            location="/departments/{id}",
        ),
        Route("GET", "/departments", "ListDepartments"),
        Route("GET", "/departments/{id}", "GetDepartment", unwrap="department"),
        Route("PATCH", "/departments/{id}", "UpdateDepartment", unwrap="department"),
        Route("DELETE", "/departments/{id}", "DeleteDepartment", status=204),
        # Roles.
        Route("POST", "/roles", "CreateRole", status=201, unwrap="role", location="/roles/{id}"),
        Route("GET", "/roles", "ListRoles"),
        Route("GET", "/roles/{id}", "GetRole", unwrap="role"),
        Route("PATCH", "/roles/{id}", "UpdateRole", unwrap="role", read_only=("built_in",)),
        Route("DELETE", "/roles/{id}", "DeleteRole", status=204),
        # Partner API keys.
        Route(
            "POST",
            "/api-keys",
            "CreateApiKey",
            status=201,
            location="/api-keys/{api_key.id}",
            summary="Create an API key (the secret is shown only in this answer)",
        ),
        Route("GET", "/api-keys", "ListApiKeys"),
        Route("GET", "/api-keys/{id}", "GetApiKey", unwrap="api_key"),
        Route("DELETE", "/api-keys/{id}", "RevokeApiKey", status=204, summary="Revoke an API key"),
        # The audit trail.
        Route("GET", "/audit-events", "ListAuditEvents", tag="audit"),
    ],
)
