from __future__ import annotations

from crm_kit.settings import ServiceSettings
from pydantic import AliasChoices, Field

LOCAL_FORM_SECRET = "local-only-web-form-secret"


class SalesSettings(ServiceSettings):
    service_name: str = "sales"
    grpc_port: int = 50053
    # Signs the "form shown at" stamps of public web forms (time-to-submit check); the same on every replica.
    form_secret: str = LOCAL_FORM_SECRET
    # How often the periodic jobs run: lead reclaim, overdue instalments, renewal and task reminders. They run
    # in one replica at a time, the leader of an advisory lock on the sales database (0: never; operators can
    # call RunLeadReclaim and RunCollectionJobs).
    reclaim_interval_seconds: float = 300.0
    # The durable consumer that sets up a new company's defaults (its default pipeline) from identity's
    # TenantCreated. Replicas of one deployment share it; two deployments with their own databases on one NATS
    # namespace need a name each.
    tenant_setup_consumer: str = "sales-tenant-setup"
    customers_service_addr: str = Field(
        default="127.0.0.1:50052",
        validation_alias=AliasChoices("CUSTOMERS_SERVICE_ADDR", "CRM_CUSTOMERS_SERVICE_ADDR"),
    )

    def production_problems(self) -> list[str]:
        problems = super().production_problems()
        if self.form_secret == LOCAL_FORM_SECRET or len(self.form_secret) < 32:
            problems.append("CRM_FORM_SECRET must be set to a random string of 32+ characters")
        return problems
