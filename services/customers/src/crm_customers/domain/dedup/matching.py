"""Finding the existing records a would-be account or contact duplicates, by the tenant's active rules.

`check(uow, "account", fields, mode="create")` is what account and contact writes call; imports call the
batch form in `crm_customers.domain.imports`. Exact rules use the normalised columns' indexes (GIN on the
phone and e-mail arrays, B-tree on the credit code); the company-name rule asks pg_trgm for keys like the
candidate's (GIN trigram index on accounts.name_key) and scores them with `normalize.company_name_score`;
the person rule looks at the contacts of the same accounts whose name key is the candidate's in either order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crm.customers.v1 import duplicates_pb2
from crm_kit.errors import AlreadyExists, FieldError
from crm_kit.policy import Decision
from sqlalchemy import Text, cast, func, or_, select
from sqlalchemy.dialects.postgresql import ARRAY

from crm_customers import models, normalize
from crm_customers.domain.common import is_hidden, visible
from crm_customers.domain.dedup.common import MATCH_PB, caller, session_of
from crm_customers.domain.dedup.models import DuplicateRule
from crm_customers.domain.dedup.rules import active_rules

# Strictest first: a create blocked by one rule and warned by another is blocked.
API_STRICTNESS = ("block", "warn", "allow")
IMPORT_STRICTNESS = ("skip", "update", "create")
MAX_CANDIDATES = 20
FUZZY_SCAN_LIMIT = 50


@dataclass
class Candidate:
    record_type: str
    id: str
    name: str
    score: float = 0.0
    rule_ids: list[str] = field(default_factory=list)
    matches: list[str] = field(default_factory=list)
    matched_values: list[str] = field(default_factory=list)

    def add(self, rule: DuplicateRule, score: float, value: str) -> None:
        self.score = max(self.score, score)
        if rule.id not in self.rule_ids:
            self.rule_ids.append(rule.id)
        if rule.match not in self.matches:
            self.matches.append(rule.match)
        if value and value not in self.matched_values:
            self.matched_values.append(value)

    def to_pb(self) -> duplicates_pb2.DuplicateCandidate:
        return duplicates_pb2.DuplicateCandidate(
            record_type=self.record_type,
            id=self.id,
            name=self.name,
            score=round(self.score, 3),
            rule_ids=self.rule_ids,
            matches=[MATCH_PB[m] for m in self.matches],
            matched_values=self.matched_values,
        )


@dataclass
class Result:
    """The candidates, best first, and what the rules that matched say (None when nothing matched)."""

    candidates: list[Candidate]
    action: str | None
    rules: list[DuplicateRule] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        return self.action == "block"

    @property
    def warnings(self) -> list[Candidate]:
        return self.candidates if self.action == "warn" else []

    def raise_if_blocked(self, shown: list[duplicates_pb2.DuplicateCandidate] | None = None) -> None:
        """409 `duplicate_found`. The message and the field errors (`duplicates.<id>`: what matched) name the
        candidates by id only; the problem's `duplicates` member lists them as `shown` (what the caller may
        see of them, see `conceal`), or by id, score, rules and matches when not given."""
        if not self.blocked:
            return
        if shown is None:
            shown = [bare(c.to_pb()) for c in self.candidates]
        ids = ", ".join(c.id for c in self.candidates[:5])
        raise AlreadyExists(
            f"a duplicate rule blocks this: it matches existing record(s) {ids}",
            reason="duplicate_found",
            field_errors=[
                FieldError(
                    f"duplicates.{c.id}",
                    f"matches on {', '.join(c.matches)} (score {c.score:.2f})",
                )
                for c in self.candidates
            ],
            extensions={"duplicates": [candidate_json(c) for c in shown]},
        )

    def to_pb(self) -> list[duplicates_pb2.DuplicateCandidate]:
        return [c.to_pb() for c in self.candidates]


# ---------------------------------------------------------------- the would-be record


@dataclass
class Probe:
    """The matched fields of a would-be record, normalised."""

    name: str = ""
    name_key: str = ""
    alt_names: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    credit_code: str = ""
    account_ids: tuple[str, ...] = ()


def _get(fields: Any, name: str, default: Any = None) -> Any:
    if isinstance(fields, Mapping):
        return fields.get(name, default)
    return getattr(fields, name, default)


def _normalised(values: Iterable[str], fn: Any) -> tuple[str, ...]:
    out = []
    for v in values or ():
        try:
            n = fn(v)
        except normalize.InvalidValue:
            continue
        if n not in out:
            out.append(n)
    return tuple(out)


def probe_of(record_type: str, fields: Any) -> Probe:
    """Accepts a model row, a protobuf Account/Contact or a dict; uses the normalised columns when present."""
    name = _get(fields, "name", "") or ""
    phones = tuple(_get(fields, "phones_normalized", None) or ()) or _normalised(
        _get(fields, "phones", ()) or (), normalize.normalize_phone
    )
    emails = tuple(_get(fields, "emails_normalized", None) or ()) or _normalised(
        _get(fields, "emails", ()) or (), normalize.normalize_email
    )
    code = _get(fields, "credit_code", "") or ""
    if code:
        try:
            code = normalize.normalize_credit_code(code)
        except normalize.InvalidValue:
            code = code.strip().upper()
    account_ids = list(_get(fields, "account_ids", ()) or ())
    primary = _get(fields, "primary_account_id", "") or ""
    if primary and primary not in account_ids:
        account_ids.append(primary)
    if record_type == "account":
        key = normalize.company_name_key(name) if name else ""
        alt = (_get(fields, "alt_name", "") or "",)
    else:
        key = normalize.person_name_key(name) if name else ""
        alt = (_get(fields, "name_latin", "") or "",)
    return Probe(
        name=name,
        name_key=key,
        alt_names=tuple(a for a in alt if a),
        phones=phones,
        emails=emails,
        credit_code=code,
        account_ids=tuple(account_ids),
    )


# ---------------------------------------------------------------- matching


def _model(record_type: str) -> Any:
    return models.Account if record_type == "account" else models.Contact


def _text_array(values: Iterable[str]) -> Any:
    return cast(list(values), ARRAY(Text))


def person_key_variants(name: str, *others: str) -> list[str]:
    """The name keys a person may be stored under: written order and family-name-last order, any script."""
    keys: list[str] = []
    for n in (name, *others):
        tokens = normalize._person_tokens(n) if n else []
        for variant in (tokens, tokens[-1:] + tokens[:-1], tokens[1:] + tokens[:1]):
            k = "".join(variant)
            if k and k not in keys:
                keys.append(k)
    return keys


async def find_candidates(
    session: Any,
    *,
    tenant_id: str,
    record_type: str,
    probe: Probe,
    rules: list[DuplicateRule],
    exclude_ids: Iterable[str] = (),
) -> dict[str, Candidate]:
    model = _model(record_type)
    live = [model.tenant_id == tenant_id, model.deleted_at.is_(None)]
    excluded = [i for i in exclude_ids if i]
    if excluded:
        live.append(model.id.not_in(excluded))
    found: dict[str, Candidate] = {}

    def hit(row_id: str, name: str, rule: DuplicateRule, score: float, value: str) -> None:
        found.setdefault(row_id, Candidate(record_type, row_id, name)).add(rule, score, value)

    for rule in rules:
        if rule.match == "phone" and probe.phones:
            stmt = select(model.id, model.name, model.phones_normalized).where(
                *live, model.phones_normalized.overlap(_text_array(probe.phones))
            )
            for row in (await session.execute(stmt.limit(MAX_CANDIDATES))).all():
                for value in set(row.phones_normalized) & set(probe.phones):
                    hit(row.id, row.name, rule, 1.0, value)
        elif rule.match == "email" and probe.emails:
            stmt = select(model.id, model.name, model.emails_normalized).where(
                *live, model.emails_normalized.overlap(_text_array(probe.emails))
            )
            for row in (await session.execute(stmt.limit(MAX_CANDIDATES))).all():
                for value in set(row.emails_normalized) & set(probe.emails):
                    hit(row.id, row.name, rule, 1.0, value)
        elif rule.match == "credit_code" and probe.credit_code and record_type == "account":
            stmt = select(model.id, model.name).where(*live, model.credit_code == probe.credit_code)
            for row in (await session.execute(stmt.limit(MAX_CANDIDATES))).all():
                hit(row.id, row.name, rule, 1.0, probe.credit_code)
        elif rule.match == "company_name" and probe.name_key and record_type == "account":
            keys = [probe.name_key] + [normalize.company_name_key(a) for a in probe.alt_names]
            keys = [k for k in dict.fromkeys(keys) if k]
            similar = or_(*(model.name_key.op("%")(k) for k in keys), model.name_key.in_(keys))
            stmt = (
                select(model.id, model.name, model.alt_name, model.name_key)
                .where(*live, similar)
                .order_by(func.similarity(model.name_key, keys[0]).desc())
                .limit(FUZZY_SCAN_LIMIT)
            )
            for row in (await session.execute(stmt)).all():
                score = max(
                    normalize.company_name_score(a, b)
                    for a in (probe.name, *probe.alt_names)
                    for b in (row.name, row.alt_name)
                    if a and b
                )
                if score >= rule.threshold:
                    hit(row.id, row.name, rule, score, row.name_key)
        elif rule.match == "person_name_and_company" and probe.name and probe.account_ids:
            keys = person_key_variants(probe.name, *probe.alt_names)
            stmt = (
                select(model.id, model.name, model.name_latin)
                .where(
                    *live, model.account_ids.overlap(_text_array(probe.account_ids)), model.name_key.in_(keys)
                )
                .limit(FUZZY_SCAN_LIMIT)
            )
            for row in (await session.execute(stmt)).all():
                score = max(
                    normalize.person_name_score(a, b)
                    for a in (probe.name, *probe.alt_names)
                    for b in (row.name, row.name_latin)
                    if a and b
                )
                if score >= rule.threshold:
                    hit(row.id, row.name, rule, score, normalize.person_name_key(row.name))
    return found


def decide(found: dict[str, Candidate], rules: list[DuplicateRule], mode: str) -> str | None:
    """The strictest action among the rules that matched, for mode "create", "update" or "import"."""
    matched = {rid for c in found.values() for rid in c.rule_ids}
    actions = [
        r.on_import if mode == "import" else (r.on_update if mode == "update" else r.on_create)
        for r in rules
        if r.id in matched
    ]
    order = IMPORT_STRICTNESS if mode == "import" else API_STRICTNESS
    for action in order:
        if action in actions:
            return action
    return None


async def check(
    uow: Any,
    object_type: str,
    candidate_fields: Any,
    mode: str = "create",
    *,
    exclude_id: str | None = None,
    tenant_id: str | None = None,
) -> Result:
    """The duplicates of a would-be account or contact (`object_type` "account" | "contact") under the tenant's
    active rules, and what `mode` ("create" | "update" | "import"; "api" means "create") should do about them.

    `candidate_fields`: the model row (normalised columns are used), a protobuf Account/Contact, or a dict with
    name, alt_name/name_latin, phones, emails, credit_code, account_ids, primary_account_id. Pass the record's
    own id as `exclude_id` on update. Typical use in a create:

        result = await dedup.check(uow, "account", row, mode="create")
        result.raise_if_blocked()          # 409 duplicate_found with the candidates
        ... save ...; return row, result.warnings
    """
    mode = "create" if mode == "api" else mode
    session = session_of(uow)
    tenant = tenant_id or caller().tenant_id
    rules = await active_rules(session, tenant, object_type)
    if not rules:
        return Result([], None, [])
    probe = probe_of(object_type, candidate_fields)
    own_id = exclude_id or (
        _get(candidate_fields, "id", "") if not isinstance(candidate_fields, Mapping) else ""
    )
    found = await find_candidates(
        session,
        tenant_id=tenant,
        record_type=object_type,
        probe=probe,
        rules=rules,
        exclude_ids=[own_id] if own_id else [],
    )
    candidates = sorted(found.values(), key=lambda c: (-c.score, c.id))[:MAX_CANDIDATES]
    return Result(candidates, decide(found, rules, mode), rules)


# ---------------------------------------------------------------- what a caller may see of candidates

# The record field each match compares: when the caller may not see it, the matched values are not shown.
MATCHED_FIELD = {
    duplicates_pb2.DUPLICATE_MATCH_PHONE: "phones",
    duplicates_pb2.DUPLICATE_MATCH_EMAIL: "emails",
    duplicates_pb2.DUPLICATE_MATCH_CREDIT_CODE: "credit_code",
    duplicates_pb2.DUPLICATE_MATCH_COMPANY_NAME: "name",
    duplicates_pb2.DUPLICATE_MATCH_PERSON_NAME_AND_COMPANY: "name",
}


def bare(c: duplicates_pb2.DuplicateCandidate) -> duplicates_pb2.DuplicateCandidate:
    """That it exists, not what it is: id, type, score, rules and matches."""
    c.name = ""
    del c.matched_values[:]
    return c


_MATCH_WORDS = {
    v.number: v.name.removeprefix("DUPLICATE_MATCH_").lower()
    for v in duplicates_pb2.DuplicateMatch.DESCRIPTOR.values
    if v.number
}


def candidate_json(c: duplicates_pb2.DuplicateCandidate) -> dict[str, Any]:
    """A candidate as the REST API shows a DuplicateCandidate in an answer (docs/api-style.md): every field,
    null for an empty value, matches as short words ("phone")."""
    return {
        "record_type": c.record_type or None,
        "id": c.id or None,
        "name": c.name or None,
        "score": c.score,
        "rule_ids": list(c.rule_ids),
        "matches": [_MATCH_WORDS[m] for m in c.matches if m in _MATCH_WORDS],
        "matched_values": list(c.matched_values),
    }


async def in_scope(session: Any, record_type: str, decision: Decision, ids: Iterable[str]) -> set[str]:
    """Which of these records are inside the data scope of `decision` (the caller's "read" on `record_type`)."""
    model = _model(record_type)
    ids = list(ids)
    if not ids:
        return set()
    return set(
        (await session.scalars(select(model.id).where(model.id.in_(ids), visible(decision, model)))).all()
    )


async def conceal(
    session: Any, record_type: str, decision: Decision, candidates: list[duplicates_pb2.DuplicateCandidate]
) -> list[duplicates_pb2.DuplicateCandidate]:
    """Blank, in place, what `decision` (the caller's "read" on `record_type`) does not show: a candidate
    outside the caller's data scope keeps only id, score, rules and matches; within the scope, a hidden name is
    blank, and matched values are dropped when a field they come from is hidden. Returns `candidates`."""
    if not candidates:
        return candidates
    seen = await in_scope(session, record_type, decision, [c.id for c in candidates])
    name_hidden = is_hidden(decision, "name")
    for c in candidates:
        if c.id not in seen:
            bare(c)
            continue
        if name_hidden:
            c.name = ""
        if any(is_hidden(decision, MATCHED_FIELD.get(m, "name")) for m in c.matches):
            del c.matched_values[:]
    return candidates
