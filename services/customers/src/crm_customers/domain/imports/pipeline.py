"""Importing accounts and contacts (the kit's `crm_kit.imports.pipeline` runs it): converted rows become COPY
lines where they are converted (a thread or a child process, off the event loop); per batch, contacts' company
cells are resolved to accounts, the tenant's duplicate rules decide each row in set-based lookups (one GIN scan
per rule and batch), creates are COPied and duplicates to update go through the record's own update (audited).
"""

from __future__ import annotations

import io
import json
from typing import Any

from crm_kit.ids import new_id
from crm_kit.imports.importer import Batcher, Row
from crm_kit.imports.jobs import may_change
from crm_kit.imports.models import ImportJob
from crm_kit.imports.pipeline import copy_text
from sqlalchemy import Text, bindparam, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import undefer

from crm_customers import models, normalize
from crm_customers.domain.dedup.matching import IMPORT_STRICTNESS
from crm_customers.domain.dedup.merge import _refresh_derived
from crm_customers.domain.imports.convert import Converter

# The company-name rule per key of a batch: at most this many accounts of the same key are scored (a key is a
# trade name: more than a few hundred same-named accounts in one tenant is not a real case), and at most this
# many of the most similar other keys, when the rule's threshold lets another key match at all.
SAME_KEY_LIMIT = 200
SIMILAR_KEY_LIMIT = 20
# The accounts of each distinct key of a batch: the B-tree (tenant_id, name_key), one probe per key.
SAME_KEY_SQL = (
    "SELECT v.key, t.id, t.name FROM unnest(CAST(:keys AS text[])) AS v(key) "
    "JOIN LATERAL (SELECT id, name FROM accounts t WHERE t.tenant_id = :tenant "
    f"AND t.name_key = v.key AND t.deleted_at IS NULL LIMIT {SAME_KEY_LIMIT}) t ON true"
)
# The most similar other keys (trigram GIN on name_key), for rules whose threshold another key can reach.
SIMILAR_KEY_SQL = (
    "SELECT v.key, t.id, t.name FROM unnest(CAST(:keys AS text[])) AS v(key) "
    "JOIN LATERAL (SELECT id, name FROM accounts t WHERE t.tenant_id = :tenant "
    "AND t.deleted_at IS NULL AND t.name_key % v.key AND t.name_key <> v.key "
    f"ORDER BY similarity(t.name_key, v.key) DESC, t.id LIMIT {SIMILAR_KEY_LIMIT}) t ON true"
)

CONTACT_COLUMNS = (
    "id",
    "tenant_id",
    "name",
    "name_latin",
    "name_key",
    "titles",
    "phones",
    "phones_normalized",
    "emails",
    "emails_normalized",
    "im_handles",
    "birthday",
    "buying_role",
    "consent_email",
    "consent_sms",
    "consent_phone",
    "consent_wechat",
    "account_ids",
    "primary_account_id",
    "owner_id",
    "department_id",
    "tags",
    "notes",
    "custom_fields",
    "created_by",
    "version",
    "search_name",
    "search_grams",
    "search_extra",
)
ACCOUNT_COLUMNS = (
    "id",
    "tenant_id",
    "name",
    "alt_name",
    "name_key",
    "credit_code",
    "legal_representative",
    "registered_capital",
    "registered_capital_currency",
    "industry",
    "size",
    "region",
    "province",
    "city",
    "district",
    "address",
    "website",
    "phones",
    "phones_normalized",
    "emails",
    "emails_normalized",
    "source",
    "tier",
    "tier_manual",
    "lifecycle_stage",
    "owner_id",
    "department_id",
    "tags",
    "notes",
    "satisfaction",
    "competitors",
    "custom_fields",
    "created_by",
    "version",
    "search_name",
    "search_grams",
    "search_extra",
)
LISTS = {
    "titles",
    "phones",
    "phones_normalized",
    "emails",
    "emails_normalized",
    "account_ids",
    "tags",
    "competitors",
    "search_grams",
}
JSON = {"im_handles": "[]", "custom_fields": "{}"}
FALSE_DEFAULTS = {"consent_email", "consent_sms", "consent_phone", "consent_wechat", "tier_manual"}
NULL_DEFAULTS = {"birthday", "primary_account_id", "credit_code", "registered_capital"}
DEFAULTS = {
    "registered_capital_currency": "CNY",
    "lifecycle_stage": "prospect",
    "satisfaction": 0,
    "version": 1,
}


def _array(values: list[Any]) -> str:
    if not values:
        return "{}"
    try:
        plain = "".join(values)
    except TypeError:  # not all text
        plain = '"'
    if (
        "\\" not in plain and '"' not in plain
    ):  # text with nothing to escape inside the quotes (the usual case)
        return copy_text('{"' + '","'.join(values) + '"}')
    return copy_text(
        "{" + ",".join('"' + str(e).replace("\\", "\\\\").replace('"', '\\"') + '"' for e in values) + "}"
    )


def _default_text(c: str) -> str:
    if c in LISTS:
        return "{}"
    if c in JSON:
        return JSON[c]
    if c in FALSE_DEFAULTS:
        return "f"
    if c in NULL_DEFAULTS:
        return "\\N"
    if c in DEFAULTS:
        return str(DEFAULTS[c])
    return ""


def _encoder(c: str) -> Any:
    if c in LISTS:
        return _array
    if c in JSON:
        return lambda v: copy_text(json.dumps(v, ensure_ascii=False))
    if c in FALSE_DEFAULTS:
        return lambda v: "t" if v else "f"
    return lambda v: copy_text(v) if isinstance(v, str) else str(v)


def copy_line(columns: tuple[str, ...], v: dict[str, Any]) -> str:
    """One row in COPY's text format (built where the row is converted: no per-value work on the event loop).
    Columns the row does not fill take the table's own defaults."""
    plan = _PLANS.get(columns)
    if plan is None:
        plan = _PLANS[columns] = [(c, _encoder(c), _default_text(c)) for c in columns]
    get = v.get
    out = [default if (value := get(c)) is None else encode(value) for c, encode, default in plan]
    return "\t".join(out)


_PLANS: dict[tuple[str, ...], list[tuple[str, Any, str]]] = {}


def convert_rows(
    converter: Converter, columns: tuple[str, ...], rows: list[tuple[int, list[str]]]
) -> list[Row]:
    """File rows → Rows with their values, errors, new id and COPY line (no database needed)."""
    out = []
    for number, cells in rows:
        converted = converter.convert(cells)
        row = Row(number, converted, errors=list(converted.errors))
        if row.errors:
            row.action = "failed"
        else:
            converted.values["id"] = new_id()
            row.record = copy_line(columns, converted.values)
        out.append(row)
    return out


class RecordBatcher(Batcher):
    """An import of accounts or contacts: converted rows become COPY lines; the tenant's duplicate rules decide
    each row (set-based, per batch); creates are COPied, updates go through the record's own update.
    Holds what the run needs across batches: the converter, the rules, the account lookup cache."""

    def __init__(self, *, job: ImportJob, converter: Converter, rules: list[Any]):
        super().__init__(job)
        self.target = job.target
        self.record_type = "account" if job.target == "accounts" else "contact"
        self.model = models.Account if job.target == "accounts" else models.Contact
        self.columns = ACCOUNT_COLUMNS if job.target == "accounts" else CONTACT_COLUMNS
        self.converter = converter
        self.rules = rules
        self.accounts: dict[str, str | None] = {}

    def convert(self, rows: list[tuple[int, list[str]]]) -> list[Row]:
        return convert_rows(self.converter, self.columns, rows)

    def child_spec(self) -> tuple[str, dict[str, Any]]:
        return "crm_customers.domain.imports.convert:batch_converter", {
            **self.converter.spec(),
            "record_columns": list(self.columns),
        }

    async def check(self, session: Any, batch: list[Row]) -> None:
        if self.target == "contacts":
            await self.resolve_accounts(session, batch)
        await self.match_duplicates(session, batch)

    async def finish(self, uow: Any, job: ImportJob) -> None:
        if self.target == "accounts" and job.rows_created:
            # The tenant's tier rules, set-based, once for the whole import (not per row).
            from crm_customers.domain import accounts

            rules, _ = await accounts.tier_rules(uow.session, job.tenant_id)
            if rules.get("rules") or rules.get("default_tier"):
                await accounts.reapply_tiers(uow, rules)

    # ---------------------------------------------------------------- per batch, in a transaction

    async def resolve_accounts(self, session: Any, batch: list[Row]) -> None:
        """Contacts: the company cell → an account (by credit code, else the company name's key)."""
        wanted = {r.converted.account_ref for r in batch if r.converted.account_ref}
        missing = [ref for ref in wanted if ref not in self.accounts]
        if missing:
            codes, keys = {}, {}
            for ref in missing:
                try:
                    codes[normalize.normalize_credit_code(ref)] = ref
                except normalize.InvalidValue:
                    keys.setdefault(normalize.company_name_key(ref), []).append(ref)
            A = models.Account
            found: dict[str, str] = {}
            if keys:
                stmt = (
                    select(A.name_key, A.id)
                    .where(
                        A.tenant_id == self.job.tenant_id, A.deleted_at.is_(None), A.name_key.in_(list(keys))
                    )
                    .order_by(A.name_key, A.id)
                )
                for key, account_id in (await session.execute(stmt)).all():
                    for ref in keys[key]:
                        found.setdefault(ref, account_id)
            if codes:
                stmt = select(A.credit_code, A.id).where(
                    A.tenant_id == self.job.tenant_id, A.deleted_at.is_(None), A.credit_code.in_(list(codes))
                )
                for code, account_id in (await session.execute(stmt)).all():
                    found.setdefault(codes[code], account_id)
            if len(self.accounts) > 100_000:  # a bounded cache
                self.accounts = {ref: self.accounts[ref] for ref in wanted if ref in self.accounts}
            for ref in missing:
                self.accounts[ref] = found.get(ref)
        for r in batch:
            ref = r.converted.account_ref
            if not ref:
                continue
            account_id = self.accounts.get(ref)
            if account_id is None:  # reported for rows that failed already too: the report names every cell
                r.errors.append(
                    (r.converted.account_ref_column, ref, "no account has this name or credit code")
                )
                r.action = "failed"
                continue
            if r.action == "failed":
                continue
            v = r.converted.values
            ids = v.setdefault("account_ids", [])
            if account_id not in ids:
                ids.append(account_id)
            v.setdefault("primary_account_id", account_id)
            r.record = None

    async def match_duplicates(self, session: Any, batch: list[Row]) -> None:
        """Apply the rules' import actions: against the table (set-based) and within the batch."""
        live = [r for r in batch if r.action != "failed"]
        if not self.rules or not live:
            return
        # The table grows from empty during an import, faster than autovacuum's statistics: without this the
        # planner would believe it tiny, or a 2000-value `&&` unselective, and scan it whole for every batch.
        # Every lookup here has its index (phone and e-mail ones are written so only their GIN index fits).
        await session.execute(text("SET LOCAL enable_seqscan = off"))
        hits: dict[int, dict[str, tuple[str, str]]] = {}  # row index → rule id → (record id, value)
        by_index = {i: r for i, r in enumerate(batch)}
        tenant = self.job.tenant_id
        table = self.model.__tablename__
        for rule in self.rules:
            pairs: list[tuple[int, str]] = []
            if rule.match in ("phone", "email"):
                column = "phones_normalized" if rule.match == "phone" else "emails_normalized"
                wanted: dict[str, list[int]] = {}
                for i, r in by_index.items():
                    if r.action != "failed":
                        for value in r.converted.values.get(column, []):
                            wanted.setdefault(value, []).append(i)
                            pairs.append((i, value))
                if wanted:
                    # One GIN bitmap scan for the whole batch (`&&` with every value), not one per row.
                    found = await session.execute(
                        text(
                            # Only the GIN index can serve the inner query (the tenant and liveness are checked
                            # on its few rows), whatever the planner believes about the table's size.
                            f"WITH m AS MATERIALIZED (SELECT id, tenant_id, deleted_at, {column} AS v FROM {table} "
                            f"WHERE {column} && CAST(:vals AS text[])) "
                            f"SELECT id, v FROM m WHERE tenant_id = :tenant AND deleted_at IS NULL"
                        ),
                        {"tenant": tenant, "vals": list(wanted)},
                    )
                    for record_id, values in found.all():
                        for value in values:
                            for i in wanted.get(value, ()):
                                hits.setdefault(i, {}).setdefault(rule.id, (record_id, value))
                self._within_batch(pairs, hits, rule)
                continue
            elif rule.match == "credit_code" and table == "accounts":
                pairs = [
                    (i, r.converted.values["credit_code"])
                    for i, r in by_index.items()
                    if r.action != "failed" and r.converted.values.get("credit_code")
                ]
                sql = (
                    "SELECT v.i, t.id, v.value FROM unnest(CAST(:idx AS int[]), CAST(:vals AS text[])) AS v(i, value) "
                    "JOIN accounts t ON t.tenant_id = :tenant AND t.deleted_at IS NULL AND t.credit_code = v.value"
                )
            elif rule.match == "company_name" and table == "accounts":
                pairs = [
                    (i, r.converted.values["name_key"])
                    for i, r in by_index.items()
                    if r.action != "failed" and r.converted.values.get("name_key")
                ]
                await self._match_company_names(session, rule, pairs, by_index, hits)
                self._within_batch(pairs, hits, rule)
                continue
            elif rule.match == "person_name_and_company" and table == "contacts":
                keyed: dict[str, list[int]] = {}
                for i, r in by_index.items():
                    v = r.converted.values
                    if r.action != "failed" and v.get("name_key") and v.get("account_ids"):
                        keyed.setdefault(v["name_key"], []).append(i)
                        pairs.extend((i, f"{a}\x1f{v['name_key']}") for a in v["account_ids"])
                if keyed:
                    found = await session.execute(
                        text(
                            "SELECT id, name_key, account_ids FROM contacts WHERE tenant_id = :tenant "
                            "AND deleted_at IS NULL AND name_key = ANY(CAST(:keys AS text[])) "
                            "AND account_ids && CAST(:accounts AS text[])"
                        ),
                        {
                            "tenant": tenant,
                            "keys": list(keyed),
                            "accounts": sorted(
                                {
                                    a
                                    for idx in keyed.values()
                                    for i in idx
                                    for a in by_index[i].converted.values["account_ids"]
                                }
                            ),
                        },
                    )
                    for record_id, key, account_ids in found.all():
                        for i in keyed.get(key, ()):
                            if set(account_ids) & set(by_index[i].converted.values["account_ids"]):
                                hits.setdefault(i, {}).setdefault(rule.id, (record_id, key))
                self._within_batch(pairs, hits, rule)
                continue
            else:
                continue
            if not pairs:
                continue
            rows = await session.execute(
                text(sql), {"idx": [p[0] for p in pairs], "vals": [p[1] for p in pairs], "tenant": tenant}
            )
            for i, record_id, value in rows.all():
                hits.setdefault(i, {}).setdefault(rule.id, (record_id, value))
            self._within_batch(pairs, hits, rule)
        rules_by_id = {r.id: r for r in self.rules}
        for i, found in hits.items():
            r = by_index[i]
            actions = [rules_by_id[rid].on_import for rid in found]
            action = next(a for a in IMPORT_STRICTNESS if a in actions)
            if action == "create":
                continue
            record_id, value = next(
                ((rec, val) for rid, (rec, val) in found.items() if rules_by_id[rid].on_import == action),
                ("", ""),
            )
            matched = ", ".join(sorted({rules_by_id[rid].match for rid in found}))
            if action == "update" and not record_id:
                action = "skip"  # the earlier row of this file is not in the table yet: nothing to update
            if action == "skip":
                r.action = "skip"
                target = f"record {record_id}" if record_id else "an earlier row of this file"
                r.errors.append(("", value, f"skipped: duplicate of {target} ({matched})"))
            else:
                r.action, r.duplicate_of = "update", record_id

    async def _match_company_names(
        self,
        session: Any,
        rule: Any,
        pairs: list[tuple[int, str]],
        by_index: dict[int, Row],
        hits: dict[int, dict[str, tuple[str, str]]],
    ) -> None:
        """The company-name rule for a batch, in at most two statements. Before, each row asked for every
        key similar by trigrams (`name_key % key`, GIN over every tenant's keys: thousands of candidates per row
        at 100k accounts a tenant, about 80 ms a row) and kept any 20. Now: the accounts of the same key (the
        B-tree (tenant_id, name_key), one probe per distinct key: about 0.1 ms), and only for keys where a name
        of another key could still reach the rule's threshold (`normalize.best_score_of_another_key`; at the
        default 0.85 that is never the case) the most similar other keys by trigrams. Each candidate is scored
        as before (`company_name_score`); the best one that meets the threshold is the row's duplicate. What a
        match needs is unchanged: at the default threshold only names of the same key ever scored enough."""
        keyed: dict[str, list[int]] = {}
        for i, key in pairs:
            keyed.setdefault(key, []).append(i)
        if not keyed:
            return
        params = {"tenant": self.job.tenant_id, "keys": list(keyed)}
        found: dict[str, list[tuple[str, str]]] = {}
        same = await session.execute(text(SAME_KEY_SQL), params)
        for key, record_id, name in same.all():
            found.setdefault(key, []).append((record_id, name))
        fuzzy = [k for k in keyed if normalize.best_score_of_another_key(k) >= rule.threshold]
        if fuzzy:
            similar = await session.execute(
                text(SIMILAR_KEY_SQL),
                {**params, "keys": fuzzy},
            )
            for key, record_id, name in similar.all():
                found.setdefault(key, []).append((record_id, name))
        score = normalize.company_name_score
        for key, candidates in found.items():
            for i in keyed[key]:
                name = by_index[i].converted.values["name"]
                best = max(
                    ((score(name, other), record_id, other) for record_id, other in candidates),
                    key=lambda c: (c[0], c[1]),
                )
                if best[0] >= rule.threshold:
                    hits.setdefault(i, {}).setdefault(rule.id, (best[1], best[2]))

    @staticmethod
    def _within_batch(
        pairs: list[tuple[int, str]], hits: dict[int, dict[str, tuple[str, str]]], rule: Any
    ) -> None:
        """A later row repeating an earlier row's value (that earlier row is not in the table yet)."""
        first: dict[str, int] = {}
        for i, value in pairs:
            if value in first and first[value] != i:
                hits.setdefault(i, {}).setdefault(rule.id, ("", value))
            else:
                first.setdefault(value, i)

    async def update_existing(self, session: Any, r: Row, uow: Any = None) -> None:
        """The existing record takes the row's non-empty values (lists: added to), audited like any update."""
        from crm.customers.v1 import events_pb2

        from crm_customers.domain import accounts, contacts

        row = await session.get(self.model, r.duplicate_of, with_for_update=True, options=[undefer("*")])
        if row is None or row.deleted_at is not None:
            r.action = "create"
            return
        if not may_change(self.job, row.owner_id, row.department_id, getattr(row, "team_member_ids", None)):
            r.action = "skip"
            r.errors.append(("", "", f"skipped: duplicate of record {row.id}, which you may not change"))
            return
        domain: Any = accounts if self.record_type == "account" else contacts
        before = domain.snapshot(row)
        for key, value in r.converted.values.items():
            if (
                key in ("id", "tenant_id", "created_by", "owner_id", "department_id", "name_key")
                or key.startswith("search_")
                or key.endswith("_normalized")
            ):
                continue
            if key == "custom_fields":
                row.custom_fields = {**(row.custom_fields or {}), **value}
            elif isinstance(value, list):
                current = list(getattr(row, key) or [])
                setattr(row, key, current + [x for x in value if x not in current])
            elif value not in (None, ""):
                setattr(row, key, value)
        _refresh_derived(self.record_type, row)
        if domain.snapshot(row) == before:
            return
        row.version += 1
        await session.flush()
        await session.refresh(row)
        if uow is not None:
            if self.record_type == "account":
                payload: Any = events_pb2.AccountUpdated(account=accounts.account_pb(row))
            else:
                payload = events_pb2.ContactUpdated(contact=contacts.contact_pb(row))
            uow.emit(
                payload,
                aggregate_type=self.record_type,
                aggregate_id=row.id,
                aggregate_version=row.version,
                action="updated",
                before=before,
                after=domain.snapshot(row),
            )

    async def settle(self, session: Any) -> None:
        """Merge the GIN pending lists of the indexes the rules search into their trees. New entries wait in a
        pending list that every search scans in full; over a big import it would make each batch's lookups
        slower than the last. Merging after every batch keeps lookups at tree speed (the merge is work the
        index does anyway, at the 4 MB pending-list limit)."""
        names = {
            "phone": f"ix_{self.model.__tablename__}_phones",
            "email": f"ix_{self.model.__tablename__}_emails",
        }
        indexes = sorted({names[r.match] for r in self.rules if r.match in names})
        if indexes:
            calls = ", ".join(f"gin_clean_pending_list(CAST(:i{n} AS regclass))" for n in range(len(indexes)))
            await session.execute(text(f"SELECT {calls}"), {f"i{n}": ix for n, ix in enumerate(indexes)})

    async def write(self, session: Any, batch: list[Row], uow: Any = None) -> None:
        """The batch's creates (COPY) and updates, in the caller's transaction."""
        for r in batch:
            if r.action == "update":
                await self.update_existing(session, r, uow)
        creates = [r for r in batch if r.action == "create"]
        if creates:
            lines = [r.record or copy_line(self.columns, r.converted.values) for r in creates]
            raw = await (await session.connection()).get_raw_connection()
            await raw.driver_connection.copy_to_table(
                self.model.__tablename__,
                source=io.BytesIO(("\n".join(lines) + "\n").encode()),
                columns=list(self.columns),
                format="text",
            )
            if self.target == "accounts":
                await session.execute(
                    text(
                        "INSERT INTO account_stage_changes (id, tenant_id, account_id, from_stage, to_stage, "
                        "changed_by, changed_at) SELECT gen_random_uuid()::text, :tenant, a.id, '', a.lifecycle_stage, "
                        ":by, now() FROM accounts a WHERE a.id = ANY(:ids)"
                    ).bindparams(bindparam("ids", type_=ARRAY(Text))),
                    {
                        "tenant": self.job.tenant_id,
                        "by": self.job.created_by,
                        "ids": [r.converted.values["id"] for r in creates],
                    },
                )
