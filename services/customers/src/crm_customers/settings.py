from __future__ import annotations

from crm_kit.settings import ServiceSettings


class CustomersSettings(ServiceSettings):
    service_name: str = "customers"
    # How often the recycle bin purge runs (on one replica at a time); 0 turns it off.
    recycle_bin_purge_interval_seconds: float = 3600.0
    # The durable consumer that puts sales events on account timelines. Every replica of one deployment shares
    # it (each event is handled once); two deployments with their own databases on one NATS namespace need
    # a name each.
    sales_timeline_consumer: str = "customers-sales-timeline"
    # The durable consumer that sets up a new company's default duplicate rules from identity's TenantCreated
    # (shared by a deployment's replicas; a name each for two deployments on one NATS namespace).
    tenant_setup_consumer: str = "customers-tenant-setup"
