"""Every gRPC service the gateway routes to: its address name and its descriptor, one line each.

A service's REST face is its methods' `google.api.http` rules (crm_gateway.routing); nothing else is written
here. A message's schema keeps its short name if its service comes first, so new services go last and what
partners generated from the document is never renamed.
"""

from crm.customers.v1 import customers_pb2, data_quality_pb2
from crm.identity.v1 import identity_pb2
from crm.sales.v1 import (
    activities_pb2,
    contracts_pb2,
    forecasts_pb2,
    lead_imports_pb2,
    leads_pb2,
    pipelines_pb2,
    quotes_pb2,
    settings_pb2,
)

from crm_gateway.routing import Service

SERVICES: list[Service] = [
    Service("identity", identity_pb2.DESCRIPTOR.services_by_name["IdentityService"]),
    Service("customers", customers_pb2.DESCRIPTOR.services_by_name["CustomersService"]),
    Service("sales", leads_pb2.DESCRIPTOR.services_by_name["LeadsService"]),
    Service("sales", pipelines_pb2.DESCRIPTOR.services_by_name["PipelinesService"]),
    Service("sales", quotes_pb2.DESCRIPTOR.services_by_name["QuotesService"]),
    Service("sales", contracts_pb2.DESCRIPTOR.services_by_name["ContractsService"]),
    Service("sales", activities_pb2.DESCRIPTOR.services_by_name["ActivitiesService"]),
    Service("sales", forecasts_pb2.DESCRIPTOR.services_by_name["ForecastsService"]),
    Service("sales", settings_pb2.DESCRIPTOR.services_by_name["SalesSettingsService"]),
    Service("customers", data_quality_pb2.DESCRIPTOR.services_by_name["CustomersDataService"]),
    Service("sales", lead_imports_pb2.DESCRIPTOR.services_by_name["LeadImportsService"]),
]
