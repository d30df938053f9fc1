"""Customers' REST face: accounts, contacts, the hierarchy, relationships and the graph, interactions and the
timeline, custom fields, saved views, search, and the recycle bin.

Fields, types and schemas come from customers.proto. Creating or changing an account or contact answers the
record with `duplicates`: what the tenant's "warn" duplicate rules found (a "block" rule answers 409
`duplicate_found` with the same list in the problem's `duplicates`). Custom fields travel as the `custom_fields` object of an
account or contact (typed per tenant: GET /custom-fields describes each key's type, options and rules).
Lists take `filter=field:op:value` (repeatable), `sort=-field,field`, `q=` (keyword), `view_id=` (a saved view)
and `deleted=true` (the recycle bin).
"""

from crm.customers.v1 import customers_pb2

from crm_gateway.routing import Route, ServiceRoutes

_SERVER_SET = ("department_id", "subsidiary_count", "descendant_count", "created_by", "deleted_at")

CUSTOMERS = ServiceRoutes(
    name="customers",
    service=customers_pb2.DESCRIPTOR.services_by_name["CustomersService"],
    routes=[
        # Accounts.
        Route(
            "POST",
            "/accounts",
            "CreateAccount",
            status=201,
            unwrap="account",
            also=("duplicates",),
            location="/accounts/{id}",
            tag="accounts",
            summary='Create an account (company); the body is {"account": {...}}',
        ),
        Route(
            "GET",
            "/accounts",
            "ListAccounts",
            query={"q": "query"},
            tag="accounts",
            summary="List accounts: filter=field:op:value, sort, q, view_id; deleted=true lists the recycle bin",
        ),
        Route(
            "GET",
            "/accounts/count",
            "CountAccounts",
            query={"q": "query"},
            tag="accounts",
            summary="Count accounts matching a list's filters (exact up to 10,000, then capped)",
        ),
        Route("GET", "/accounts/{id}", "GetAccount", unwrap="account", tag="accounts"),
        Route(
            "PATCH",
            "/accounts/{id}",
            "UpdateAccount",
            unwrap="account",
            also=("duplicates",),
            read_only=_SERVER_SET,
            tag="accounts",
        ),
        Route(
            "DELETE",
            "/accounts/{id}",
            "DeleteAccount",
            status=204,
            tag="accounts",
            summary="Move to the recycle bin",
        ),
        Route(
            "POST",
            "/accounts/{id}/restore",
            "RestoreAccount",
            unwrap="account",
            tag="accounts",
            summary="Bring an account back from the recycle bin",
        ),
        Route(
            "GET",
            "/accounts/{id}/lifecycle-history",
            "ListAccountStageChanges",
            tag="accounts",
            summary="The account's lifecycle stage changes, newest first",
        ),
        Route(
            "GET",
            "/accounts/{id}/tree",
            "GetAccountTree",
            tag="accounts",
            summary="The whole group (集团) the account belongs to, from its top, with subsidiary counts",
        ),
        Route(
            "GET",
            "/accounts/{id}/timeline",
            "ListAccountTimeline",
            tag="timeline",
            summary="Interactions on the account (and, with include_contacts, on its contacts), newest first",
        ),
        Route(
            "GET",
            "/accounts/{id}/graph",
            "GetAccountGraph",
            tag="graph",
            summary="Records related to the account, to `depth` hops (relationships, hierarchy, contacts)",
        ),
        Route("GET", "/tier-rules", "GetTierRules", unwrap="tier_rules", tag="accounts"),
        Route(
            "PUT",
            "/tier-rules",
            "UpdateTierRules",
            tag="accounts",
            summary="Set the tenant's tier rules (first matching rule wins); reapply=true recomputes every tier",
        ),
        # Contacts.
        Route(
            "POST",
            "/contacts",
            "CreateContact",
            status=201,
            unwrap="contact",
            also=("duplicates",),
            location="/contacts/{id}",
            tag="contacts",
            summary='Create a contact (person); the body is {"contact": {...}}',
        ),
        Route("GET", "/contacts", "ListContacts", query={"q": "query"}, tag="contacts"),
        Route("GET", "/contacts/count", "CountContacts", query={"q": "query"}, tag="contacts"),
        Route("GET", "/contacts/{id}", "GetContact", unwrap="contact", tag="contacts"),
        Route(
            "PATCH",
            "/contacts/{id}",
            "UpdateContact",
            unwrap="contact",
            also=("duplicates",),
            read_only=("department_id", "created_by", "deleted_at"),
            tag="contacts",
        ),
        Route("DELETE", "/contacts/{id}", "DeleteContact", status=204, tag="contacts"),
        Route("POST", "/contacts/{id}/restore", "RestoreContact", unwrap="contact", tag="contacts"),
        Route("GET", "/contacts/{id}/timeline", "ListContactTimeline", tag="timeline"),
        Route("GET", "/contacts/{id}/graph", "GetContactGraph", tag="graph"),
        # Interactions.
        Route(
            "POST",
            "/interactions",
            "CreateInteraction",
            status=201,
            unwrap="interaction",
            location="/interactions/{id}",
            tag="timeline",
        ),
        Route("GET", "/interactions", "ListInteractions", tag="timeline"),
        Route("GET", "/interactions/{id}", "GetInteraction", unwrap="interaction", tag="timeline"),
        Route(
            "PATCH",
            "/interactions/{id}",
            "UpdateInteraction",
            unwrap="interaction",
            read_only=("owner_id", "department_id", "created_by"),
            tag="timeline",
        ),
        Route("DELETE", "/interactions/{id}", "DeleteInteraction", status=204, tag="timeline"),
        # Relationships and the graph.
        Route(
            "POST",
            "/relationship-types",
            "CreateRelationshipType",
            status=201,
            unwrap="relationship_type",
            tag="graph",
        ),
        Route("GET", "/relationship-types", "ListRelationshipTypes", tag="graph"),
        Route(
            "PATCH",
            "/relationship-types/{id}",
            "UpdateRelationshipType",
            unwrap="relationship_type",
            read_only=("key", "source_type", "target_type", "symmetric", "built_in"),
            tag="graph",
        ),
        Route("DELETE", "/relationship-types/{id}", "DeleteRelationshipType", status=204, tag="graph"),
        Route(
            "POST",
            "/relationships",
            "CreateRelationship",
            status=201,
            unwrap="relationship",
            location="/relationships/{id}",
            tag="graph",
        ),
        Route("GET", "/relationships", "ListRelationships", tag="graph"),
        Route("GET", "/relationships/{id}", "GetRelationship", unwrap="relationship", tag="graph"),
        Route("DELETE", "/relationships/{id}", "DeleteRelationship", status=204, tag="graph"),
        Route(
            "GET",
            "/graph/path",
            "FindPath",
            tag="graph",
            summary="The shortest chain of relationships between two records",
        ),
        # Custom fields.
        Route(
            "POST",
            "/custom-fields",
            "CreateCustomField",
            status=201,
            unwrap="custom_field",
            location="/custom-fields/{id}",
            tag="custom fields",
        ),
        Route(
            "GET",
            "/custom-fields",
            "ListCustomFields",
            tag="custom fields",
            summary="The tenant's custom fields: the keys, types and rules of `custom_fields` in accounts and contacts",
        ),
        Route("GET", "/custom-fields/{id}", "GetCustomField", unwrap="custom_field", tag="custom fields"),
        Route(
            "PATCH",
            "/custom-fields/{id}",
            "UpdateCustomField",
            unwrap="custom_field",
            read_only=("record_type", "key", "type"),
            tag="custom fields",
        ),
        Route("DELETE", "/custom-fields/{id}", "DeleteCustomField", status=204, tag="custom fields"),
        # Saved views.
        Route(
            "POST",
            "/saved-views",
            "CreateSavedView",
            status=201,
            unwrap="saved_view",
            location="/saved-views/{id}",
            tag="saved views",
        ),
        Route("GET", "/saved-views", "ListSavedViews", tag="saved views"),
        Route("GET", "/saved-views/{id}", "GetSavedView", unwrap="saved_view", tag="saved views"),
        Route(
            "PATCH",
            "/saved-views/{id}",
            "UpdateSavedView",
            unwrap="saved_view",
            read_only=("record_type", "owner_id", "department_id"),
            tag="saved views",
        ),
        Route("DELETE", "/saved-views/{id}", "DeleteSavedView", status=204, tag="saved views"),
        # Search.
        Route(
            "GET",
            "/search",
            "Search",
            query={"q": "query"},
            tag="search",
            summary="Keyword search over accounts and contacts (Chinese substrings, typo-tolerant Latin names)",
        ),
    ],
)
