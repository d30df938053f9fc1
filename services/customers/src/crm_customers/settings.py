from __future__ import annotations

from crm_kit.settings import ServiceSettings


class CustomersSettings(ServiceSettings):
    service_name: str = "customers"
