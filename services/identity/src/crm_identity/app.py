"""The identity service: what it adds to the kit's skeleton."""

from __future__ import annotations

from pathlib import Path

from crm.identity.v1 import identity_pb2_grpc
from crm_kit.auth import JwtVerifier, local_jwks_source
from crm_kit.events.consumer import Consumer
from crm_kit.grpc_server import Servicer
from crm_kit.service import Parts, Runtime, ServiceSpec

from crm_identity.api import PUBLIC_METHODS, SERVICE, IdentityApi
from crm_identity.domain import audit
from crm_identity.domain.passwords import Passwords
from crm_identity.domain.roles import load_policy
from crm_identity.settings import IdentitySettings

MIGRATIONS = Path(__file__).parent / "migrations"

# Every service's events feed the one audit trail; a service that does not run yet simply has no events.
AUDITED_SERVICES = (
    "identity",
    "customers",
    "sales",
    "marketing",
    "servicedesk",
    "notifications",
    "reporting",
)


async def _record_audit(uow, envelope, payload) -> None:  # type: ignore[no-untyped-def]
    await audit.record(uow.session, envelope)


# Audit records are only written, never decided on: events waiting together share a transaction.
AUDIT_CONSUMERS = [
    Consumer(
        name=f"identity-audit-{service}",
        filter_subjects=[f"crm.{service}.>"],
        handler=_record_audit,
        per_transaction=100,
        batch=100,
        # An event the audit trail cannot store is a gap in it: an alert, never silent.
        alert="audit_gap",
    )
    for service in AUDITED_SERVICES
]


async def build(runtime: Runtime) -> Parts:
    settings = runtime.settings
    assert isinstance(settings, IdentitySettings)
    keys = settings.signing_keys()

    async def policy_from_db(tenant_id: str):  # type: ignore[no-untyped-def]
        async with runtime.db.read() as session:
            return await load_policy(session, tenant_id)

    policies = await runtime.policies(policy_from_db)
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
        consumers=AUDIT_CONSUMERS,
    )


SPEC = ServiceSpec(name="identity", settings=IdentitySettings, build=build, migrations=MIGRATIONS)
