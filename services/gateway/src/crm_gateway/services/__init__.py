"""Every service the gateway routes to. Adding a service = a module with its route table, listed here."""

from crm_gateway.files import FileRoutes
from crm_gateway.routing import ServiceRoutes
from crm_gateway.services.customers import CUSTOMERS
from crm_gateway.services.customers_data import CUSTOMERS_DATA, CUSTOMERS_DATA_FILES
from crm_gateway.services.identity import IDENTITY
from crm_gateway.services.sales import SALES

SERVICES: list[ServiceRoutes] = [IDENTITY, CUSTOMERS, *SALES, CUSTOMERS_DATA]
# Upload and download routes (see crm_gateway.files).
FILE_SERVICES: list[FileRoutes] = [CUSTOMERS_DATA_FILES]
