"""Routes of the customers service's data-quality API (CustomersDataService): duplicate rules and checks, scan
results, merges and undo, imports (upload, dry run, start, progress, errors) and exports."""

from crm.customers.v1 import data_quality_pb2

from crm_gateway.files import Download, FileRoutes, Upload
from crm_gateway.routing import Route, ServiceRoutes

SERVICE = data_quality_pb2.DESCRIPTOR.services_by_name["CustomersDataService"]

CUSTOMERS_DATA = ServiceRoutes(
    name="customers",  # the same service (CUSTOMERS_SERVICE_ADDR), its second gRPC API
    service=SERVICE,
    routes=[
        Route(
            "POST",
            "/duplicate-rules",
            "CreateDuplicateRule",
            status=201,
            unwrap="duplicate_rule",
            location="/duplicate-rules/{id}",
        ),
        Route("GET", "/duplicate-rules", "ListDuplicateRules"),
        Route("GET", "/duplicate-rules/{id}", "GetDuplicateRule", unwrap="duplicate_rule"),
        Route("PATCH", "/duplicate-rules/{id}", "UpdateDuplicateRule", unwrap="duplicate_rule"),
        Route("DELETE", "/duplicate-rules/{id}", "DeleteDuplicateRule", status=204),
        Route(
            "POST", "/duplicates/check", "CheckDuplicates", summary="Find the duplicates of a would-be record"
        ),
        Route(
            "POST",
            "/duplicate-scans",
            "StartDuplicateScan",
            status=201,
            unwrap="duplicate_scan",
            location="/duplicate-scans/{id}",
        ),
        Route("GET", "/duplicate-scans", "ListDuplicateScans"),
        Route("GET", "/duplicate-scans/{id}", "GetDuplicateScan", unwrap="duplicate_scan"),
        Route(
            "GET",
            "/duplicates",
            "ListDuplicateGroups",
            summary="Duplicate groups of a scan, best score first",
        ),
        Route("POST", "/merges", "MergeRecords", status=201, location="/merges/{merge.id}"),
        Route("GET", "/merges", "ListMerges"),
        Route("GET", "/merges/{id}", "GetMerge", unwrap="merge"),
        Route("POST", "/merges/{id}/undo", "UndoMerge", unwrap="merge"),
        Route("GET", "/imports", "ListImports"),
        Route("GET", "/imports/{id}", "GetImport", unwrap="import_job", summary="An import and its progress"),
        Route("POST", "/imports/{id}/dry-run", "DryRunImport"),
        Route("POST", "/imports/{id}/start", "StartImport", status=202, unwrap="import_job"),
        Route("POST", "/imports/{id}/cancel", "CancelImport", unwrap="import_job"),
        Route("GET", "/imports/{id}/errors", "ListImportErrors"),
    ],
)

CUSTOMERS_DATA_FILES = FileRoutes(
    name="customers",
    service=SERVICE,
    routes=[
        Upload(
            "/imports",
            "UploadImportFile",
            unwrap="import_job",
            location="/imports/{id}",
            summary="Upload a CSV or XLSX file to import (multipart: `file`, `target`)",
            tag="imports",
        ),
        Download(
            "/imports/{id}/errors/report",
            "DownloadImportErrors",
            summary="The error report (row, column, value, reason) as CSV or XLSX",
            tag="imports",
        ),
        Download(
            "/exports",
            "ExportRecords",
            query={"q": "query"},
            summary="Export a filtered list of accounts or contacts as CSV or XLSX, streamed",
            tag="exports",
        ),
    ],
)
