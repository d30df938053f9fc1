"""The identity service: what it adds to the kit's skeleton."""

from __future__ import annotations

from pathlib import Path

from crm.identity.v1 import identity_pb2_grpc
from crm_kit.auth import JwtVerifier, local_jwks_source
from crm_kit.grpc_server import Servicer
from crm_kit.policy import PolicyCache
from crm_kit.service import Parts, Runtime, ServiceSpec
from crm_identity.api import PUBLIC_METHODS, SERVICE, IdentityApi
from crm_identity.domain.passwords import Passwords
from crm_identity.domain.roles import load_policy
from crm_identity.settings import IdentitySettings

MIGRATIONS = Path(__file__).parent / "migrations"


async def build(runtime: Runtime) -> Parts:
    settings = runtime.settings
    assert isinstance(settings, IdentitySettings)
    keys = settings.signing_keys()

    async def policy_from_db(tenant_id: str):  # type: ignore[no-untyped-def]
        async with runtime.db.read() as session:
            return await load_policy(session, tenant_id)

    policies = PolicyCache(policy_from_db)
    api = IdentityApi(
        settings=settings,
        db=runtime.db,
        keys=keys,
        policies=policies,
        passwords=Passwords(
            memory_kib=settings.argon2_memory_kib,
            time_cost=settings.argon2_time_cost,
            parallelism=settings.argon2_parallelism,
        ),
    )
    return Parts(
        servicers=[Servicer(identity_pb2_grpc.add_IdentityServiceServicer_to_server, api, SERVICE.full_name)],
        public_methods=PUBLIC_METHODS,
        verifier=JwtVerifier(
            local_jwks_source(keys), issuer=settings.jwt_issuer, audience=settings.jwt_audience
        ),
        consumers=[],
    )


SPEC = ServiceSpec(name="identity", settings=IdentitySettings, build=build, migrations=MIGRATIONS)
