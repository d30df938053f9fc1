"""Every service the gateway routes to. Adding a service = a module with its route table, listed here."""

from crm_gateway.files import FileRoutes
from crm_gateway.routing import ServiceRoutes
from crm_gateway.services.customers import CUSTOMERS
from crm_gateway.services.customers_data import CUSTOMERS_DATA, CUSTOMERS_DATA_FILES
from crm_gateway.services.identity import IDENTITY
from crm_gateway.services.sales import LEAD_IMPORT_FILES, LEAD_IMPORTS, SALES

# A message's schema keeps its short name if its service comes first: new services go last, so what partners
# generated from the document is never renamed (lead imports' crm.common.v1 ImportJob is CommonV1ImportJob).
SERVICES: list[ServiceRoutes] = [IDENTITY, CUSTOMERS, *SALES, CUSTOMERS_DATA, LEAD_IMPORTS]
# Upload and download routes (see crm_gateway.files).
FILE_SERVICES: list[FileRoutes] = [CUSTOMERS_DATA_FILES, LEAD_IMPORT_FILES]
