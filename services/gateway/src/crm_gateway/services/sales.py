"""Sales' REST face: leads and lead pools, web forms (with the public submit), pipelines, opportunities and
the kanban board. Fields, types and schemas come from protos/crm/sales/v1/*.proto."""

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

from crm_gateway.files import Download, FileRoutes, Upload
from crm_gateway.routing import Route, ServiceRoutes

LEADS = ServiceRoutes(
    name="sales",
    service=leads_pb2.DESCRIPTOR.services_by_name["LeadsService"],
    routes=[
        Route(
            "POST",
            "/leads",
            "CreateLead",
            status=201,
            unwrap="lead",
            location="/leads/{id}",
            also=("duplicates",),
        ),
        Route("GET", "/leads", "ListLeads", query={"q": "query"}),
        Route("GET", "/leads/{id}", "GetLead", unwrap="lead"),
        Route(
            "PATCH",
            "/leads/{id}",
            "UpdateLead",
            unwrap="lead",
            read_only=(
                "score",
                "owner_id",
                "department_id",
                "pool_id",
                "form_id",
                "claimed_at",
                "last_follow_up_at",
                "converted_account_id",
                "converted_contact_id",
                "converted_opportunity_id",
                "converted_at",
            ),
        ),
        Route("DELETE", "/leads/{id}", "DeleteLead", status=204),
        Route("POST", "/leads/{lead_id}/follow-ups", "AddLeadFollowUp", status=201),
        Route("GET", "/leads/{lead_id}/follow-ups", "ListLeadFollowUps"),
        Route(
            "POST",
            "/leads/{id}/claim",
            "ClaimLead",
            unwrap="lead",
            summary="Claim a lead from its pool (抢单)",
        ),
        Route("POST", "/leads/{id}/assign", "AssignLead", unwrap="lead", summary="Assign a lead to a rep"),
        Route(
            "POST", "/leads/{id}/release", "ReleaseLead", unwrap="lead", summary="Return a lead to its pool"
        ),
        Route("GET", "/leads/{id}/history", "ListLeadHistory", summary="Who held the lead and why it moved"),
        Route(
            "POST",
            "/leads/{id}/convert",
            "ConvertLead",
            summary="Convert into account + contact (customers) and an opportunity",
        ),
        Route(
            "POST",
            "/lead-pools/reclaim",
            "RunLeadReclaim",
            summary="Run the reclaim job for my tenant now (or as of `now`)",
        ),
        Route(
            "POST", "/lead-pools", "CreateLeadPool", status=201, unwrap="pool", location="/lead-pools/{id}"
        ),
        Route("GET", "/lead-pools", "ListLeadPools"),
        Route("GET", "/lead-pools/{id}", "GetLeadPool", unwrap="pool"),
        Route("PATCH", "/lead-pools/{id}", "UpdateLeadPool", unwrap="pool"),
        Route("DELETE", "/lead-pools/{id}", "DeleteLeadPool", status=204),
        Route("POST", "/lead-scoring-rules", "CreateScoringRule", status=201, unwrap="rule"),
        Route("GET", "/lead-scoring-rules", "ListScoringRules"),
        Route("DELETE", "/lead-scoring-rules/{id}", "DeleteScoringRule", status=204),
        Route("POST", "/lead-assignment-rules", "CreateAssignmentRule", status=201, unwrap="rule"),
        Route("GET", "/lead-assignment-rules", "ListAssignmentRules"),
        Route("DELETE", "/lead-assignment-rules/{id}", "DeleteAssignmentRule", status=204),
        Route("POST", "/forms", "CreateWebForm", status=201, unwrap="form", location="/forms/{id}"),
        Route("GET", "/forms", "ListWebForms"),
        Route("GET", "/forms/{id}", "GetWebForm", unwrap="form"),
        Route("PATCH", "/forms/{id}", "UpdateWebForm", unwrap="form", read_only=("token",)),
        Route(
            "GET",
            "/public/forms/{token}",
            "GetPublicWebForm",
            public=True,
            tag="forms",
            summary="A web form as a public page shows it (no credential)",
        ),
        Route(
            "POST",
            "/public/forms/{token}/submissions",
            "SubmitWebForm",
            public=True,
            tag="forms",
            summary="Submit a web form (no credential; spam-protected)",
        ),
    ],
)

PIPELINES = ServiceRoutes(
    name="sales",
    service=pipelines_pb2.DESCRIPTOR.services_by_name["PipelinesService"],
    routes=[
        Route(
            "POST", "/pipelines", "CreatePipeline", status=201, unwrap="pipeline", location="/pipelines/{id}"
        ),
        Route("GET", "/pipelines", "ListPipelines"),
        Route("GET", "/pipelines/{id}", "GetPipeline", unwrap="pipeline"),
        Route("PATCH", "/pipelines/{id}", "UpdatePipeline", unwrap="pipeline"),
        Route("DELETE", "/pipelines/{id}", "DeletePipeline", status=204),
        Route("GET", "/pipelines/{id}/board", "GetBoard", summary="The kanban board: stage totals and cards"),
        Route(
            "POST",
            "/opportunities",
            "CreateOpportunity",
            status=201,
            unwrap="opportunity",
            location="/opportunities/{id}",
        ),
        Route("GET", "/opportunities", "ListOpportunities"),
        Route("GET", "/opportunities/{id}", "GetOpportunity", unwrap="opportunity"),
        Route(
            "PATCH",
            "/opportunities/{id}",
            "UpdateOpportunity",
            unwrap="opportunity",
            read_only=(
                "lead_id",
                "pipeline_id",
                "stage_id",
                "probability",
                "department_id",
                "status",
                "won_reason",
                "lost_reason",
                "closed_at",
                "stage_entered_at",
            ),
        ),
        Route("DELETE", "/opportunities/{id}", "DeleteOpportunity", status=204),
        Route(
            "POST",
            "/opportunities/{id}/stage",
            "MoveOpportunityStage",
            unwrap="opportunity",
            summary="Move to another stage (won/lost close it)",
        ),
        Route("GET", "/opportunities/{id}/stage-history", "ListStageHistory"),
    ],
)


QUOTES = ServiceRoutes(
    name="sales",
    service=quotes_pb2.DESCRIPTOR.services_by_name["QuotesService"],
    routes=[
        Route("POST", "/products", "CreateProduct", status=201, unwrap="product", location="/products/{id}"),
        Route("GET", "/products", "ListProducts", query={"q": "query"}),
        Route("GET", "/products/{id}", "GetProduct", unwrap="product"),
        Route("PATCH", "/products/{id}", "UpdateProduct", unwrap="product"),
        Route(
            "POST",
            "/price-books",
            "CreatePriceBook",
            status=201,
            unwrap="price_book",
            location="/price-books/{id}",
        ),
        Route("GET", "/price-books", "ListPriceBooks"),
        Route("GET", "/price-books/{id}", "GetPriceBook", unwrap="price_book"),
        Route("PATCH", "/price-books/{id}", "UpdatePriceBook", unwrap="price_book"),
        Route("GET", "/approval-policy", "GetApprovalPolicy", unwrap="policy", tag="approvals"),
        Route("PATCH", "/approval-policy", "UpdateApprovalPolicy", unwrap="policy", tag="approvals"),
        Route("POST", "/quotes", "CreateQuote", status=201, unwrap="quote", location="/quotes/{id}"),
        Route("GET", "/quotes", "ListQuotes"),
        Route("GET", "/quotes/{id}", "GetQuote", unwrap="quote"),
        Route(
            "PATCH",
            "/quotes/{id}",
            "UpdateQuote",
            unwrap="quote",
            summary="Change a draft quote (lines, discounts, texts); totals are recomputed",
        ),
        Route(
            "POST", "/quotes/{id}/revise", "ReviseQuote", status=201, unwrap="quote", location="/quotes/{id}"
        ),
        Route(
            "POST",
            "/quotes/{id}/submit",
            "SubmitQuote",
            summary="Submit: approved at once or sent to approval",
        ),
        Route("POST", "/quotes/{id}/accept", "AcceptQuote", unwrap="quote"),
        Route("POST", "/quotes/{id}/decline", "DeclineQuote", unwrap="quote"),
        Route(
            "GET",
            "/quotes/{id}/pdf",
            "GetQuotePdf",
            binary="application/pdf",
            summary="The approved quote as a PDF (Chinese or English, fonts embedded)",
        ),
        Route("GET", "/approvals", "ListApprovals"),
        Route("GET", "/approvals/{id}", "GetApproval", unwrap="approval"),
        Route("POST", "/approvals/{id}/approve", "ApproveApproval", unwrap="approval"),
        Route("POST", "/approvals/{id}/reject", "RejectApproval", unwrap="approval"),
    ],
)

CONTRACTS = ServiceRoutes(
    name="sales",
    service=contracts_pb2.DESCRIPTOR.services_by_name["ContractsService"],
    routes=[
        Route(
            "POST", "/contracts", "CreateContract", status=201, unwrap="contract", location="/contracts/{id}"
        ),
        Route("GET", "/contracts", "ListContracts"),
        Route("GET", "/contracts/{id}", "GetContract", unwrap="contract"),
        Route(
            "PATCH",
            "/contracts/{id}",
            "UpdateContract",
            unwrap="contract",
            read_only=(
                "number",
                "account_id",
                "opportunity_id",
                "quote_id",
                "status",
                "signed_date",
                "renewal_reminded_at",
                "approval_id",
                "owner_id",
                "department_id",
            ),
        ),
        Route("POST", "/contracts/{id}/submit", "SubmitContract", summary="Submit for approval"),
        Route(
            "POST",
            "/contracts/{id}/activate",
            "ActivateContract",
            unwrap="contract",
            summary="Signed: active",
        ),
        Route("POST", "/contracts/{id}/terminate", "TerminateContract", unwrap="contract"),
        Route("POST", "/orders", "CreateOrder", status=201, unwrap="order", location="/orders/{id}"),
        Route("GET", "/orders", "ListOrders"),
        Route("GET", "/orders/{id}", "GetOrder", unwrap="order"),
        Route("POST", "/orders/{id}/fulfil", "FulfilOrder", unwrap="order"),
        Route("POST", "/orders/{id}/cancel", "CancelOrder", unwrap="order"),
        Route(
            "POST",
            "/payment-plans",
            "CreatePaymentPlan",
            status=201,
            unwrap="plan",
            location="/payment-plans/{id}",
        ),
        Route("GET", "/payment-plans", "ListPaymentPlans"),
        Route("GET", "/payment-plans/{id}", "GetPaymentPlan", unwrap="plan"),
        Route(
            "POST",
            "/payments",
            "RecordPayment",
            status=201,
            summary="Record a (partial) payment of an instalment",
        ),
        Route("GET", "/payments", "ListPayments"),
        Route(
            "GET",
            "/accounts/{account_id}/receivables",
            "GetReceivables",
            tag="payments",
            summary="What an account owes: planned, paid, outstanding, overdue",
        ),
        Route(
            "POST",
            "/payments/jobs",
            "RunCollectionJobs",
            summary="Run overdue detection and renewal reminders for my tenant now (or as of `now`)",
        ),
    ],
)

ACTIVITIES = ServiceRoutes(
    name="sales",
    service=activities_pb2.DESCRIPTOR.services_by_name["ActivitiesService"],
    routes=[
        Route("POST", "/tasks", "CreateTask", status=201, unwrap="task", location="/tasks/{id}"),
        Route("GET", "/tasks", "ListTasks"),
        Route("GET", "/tasks/{id}", "GetTask", unwrap="task"),
        Route(
            "PATCH",
            "/tasks/{id}",
            "UpdateTask",
            unwrap="task",
            read_only=(
                "related_type",
                "related_id",
                "status",
                "created_by",
                "completed_at",
                "reminded_at",
                "department_id",
            ),
        ),
        Route("POST", "/tasks/{id}/complete", "CompleteTask", unwrap="task"),
        Route(
            "POST",
            "/tasks/reminders",
            "RunTaskReminders",
            summary="Send due task reminders for my tenant now (or as of `now`)",
        ),
        Route(
            "POST",
            "/activities",
            "CreateActivity",
            status=201,
            unwrap="activity",
            summary="Record a follow-up on a lead, opportunity, account or contact",
        ),
        Route("GET", "/activities", "ListActivities"),
    ],
)

FORECASTS = ServiceRoutes(
    name="sales",
    service=forecasts_pb2.DESCRIPTOR.services_by_name["ForecastsService"],
    routes=[
        Route(
            "GET", "/forecasts", "GetForecast", summary="Weighted pipeline, commit, best case and collection"
        ),
        Route("PATCH", "/forecast-targets", "SetForecastTarget", unwrap="target", tag="forecasts"),
    ],
)

SALES = [LEADS, PIPELINES, QUOTES, CONTRACTS, ACTIVITIES, FORECASTS]

# Collection after the plan: re-scheduling and refunds.
COLLECTION = ServiceRoutes(
    name="sales",
    service=contracts_pb2.DESCRIPTOR.services_by_name["ContractsService"],
    routes=[
        Route(
            "PUT",
            "/payment-plans/{id}/instalments",
            "UpdatePaymentPlan",
            unwrap="plan",
            tag="payment-plans",
            summary="Re-schedule a plan: its instalments after the change, all of them (same total)",
        ),
        Route(
            "POST",
            "/payments/{payment_id}/refunds",
            "RefundPayment",
            status=201,
            summary="Pay back (part of) a payment: the instalment owes it again",
        ),
        Route("GET", "/refunds", "ListRefunds", tag="payments"),
    ],
)
SALES.append(COLLECTION)

# The contract PDF and the tenant's letterhead (sales settings) on quote and contract PDFs.
DOCUMENTS = ServiceRoutes(
    name="sales",
    service=contracts_pb2.DESCRIPTOR.services_by_name["ContractsService"],
    routes=[
        Route(
            "GET",
            "/contracts/{id}/pdf",
            "GetContractPdf",
            binary="application/pdf",
            tag="contracts",
            summary="The contract as a PDF (Chinese or English, fonts embedded, with the letterhead)",
        ),
    ],
)
SALES_SETTINGS = ServiceRoutes(
    name="sales",
    service=settings_pb2.DESCRIPTOR.services_by_name["SalesSettingsService"],
    routes=[
        Route("GET", "/sales-settings", "GetSalesSettings", unwrap="settings"),
        Route(
            "PATCH",
            "/sales-settings",
            "UpdateSalesSettings",
            unwrap="settings",
            read_only=("logo_content_type", "logo_sha256"),
            summary="Change the letterhead of quote and contract PDFs (administrators)",
        ),
    ],
)
SALES.extend([DOCUMENTS, SALES_SETTINGS])

# Lead import: the same routes and shapes as customers' /imports (customers_data.py), under /lead-imports.
LEAD_IMPORTS_SERVICE = lead_imports_pb2.DESCRIPTOR.services_by_name["LeadImportsService"]
LEAD_IMPORTS = ServiceRoutes(
    name="sales",
    service=LEAD_IMPORTS_SERVICE,
    routes=[
        Route("GET", "/lead-imports", "ListLeadImports"),
        Route(
            "GET",
            "/lead-imports/{id}",
            "GetLeadImport",
            unwrap="import_job",
            summary="A lead import and its progress",
        ),
        Route(
            "POST",
            "/lead-imports/{id}/dry-run",
            "DryRunLeadImport",
            summary="Check a lead import without writing: counts, first problems, a preview",
        ),
        Route(
            "POST",
            "/lead-imports/{id}/start",
            "StartLeadImport",
            status=202,
            unwrap="import_job",
            summary="Start a lead import (runs in the background)",
        ),
        Route("POST", "/lead-imports/{id}/cancel", "CancelLeadImport", unwrap="import_job"),
        Route("GET", "/lead-imports/{id}/errors", "ListLeadImportErrors"),
    ],
)
LEAD_IMPORT_FILES = FileRoutes(
    name="sales",
    service=LEAD_IMPORTS_SERVICE,
    routes=[
        Upload(
            "/lead-imports",
            "UploadLeadImportFile",
            unwrap="import_job",
            location="/lead-imports/{id}",
            summary="Upload a CSV or XLSX file of leads to import (multipart: `file`)",
            tag="lead-imports",
        ),
        Download(
            "/lead-imports/{id}/errors/report",
            "DownloadLeadImportErrors",
            summary="The error report of a lead import (row, column, value, reason) as CSV or XLSX",
            tag="lead-imports",
        ),
    ],
)
