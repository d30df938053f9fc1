"""lead import: the kit's import tables; leads keep their phone and e-mail in normal form for duplicate lookups

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import context, op
from crm_kit.imports.schema import create_tables, drop_tables
from crm_kit.normalize import InvalidValue, normalize_email, normalize_phone

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

OPEN = "status IN ('new', 'working', 'qualified')"


def _key(normalize, raw: str) -> str:  # type: ignore[no-untyped-def]
    try:
        return normalize(raw) if raw and raw.strip() else ""
    except InvalidValue:
        return ""


def upgrade() -> None:
    create_tables(op)
    op.add_column("leads", sa.Column("phone_key", sa.String(50), nullable=False, server_default=""))
    op.add_column("leads", sa.Column("email_key", sa.String(320), nullable=False, server_default=""))
    if not context.is_offline_mode():
        # The normal forms are Python's (phonenumbers), so existing leads are keyed here, a page at a time.
        bind = op.get_bind()
        after = ""
        while True:
            rows = bind.execute(
                sa.text(
                    "SELECT id, phone, email FROM leads WHERE id > :after AND (phone <> '' OR email <> '') "
                    "ORDER BY id LIMIT 1000"
                ),
                {"after": after},
            ).all()
            if not rows:
                break
            bind.execute(
                sa.text("UPDATE leads SET phone_key = :p, email_key = :e WHERE id = :id"),
                [
                    {"id": r.id, "p": _key(normalize_phone, r.phone), "e": _key(normalize_email, r.email)}
                    for r in rows
                ],
            )
            after = rows[-1].id
    op.create_index(
        "ix_leads_open_phone",
        "leads",
        ["tenant_id", "phone_key"],
        postgresql_where=sa.text(f"phone_key <> '' AND {OPEN}"),
    )
    op.create_index(
        "ix_leads_open_email",
        "leads",
        ["tenant_id", "email_key"],
        postgresql_where=sa.text(f"email_key <> '' AND {OPEN}"),
    )


def downgrade() -> None:
    op.drop_index("ix_leads_open_email", table_name="leads")
    op.drop_index("ix_leads_open_phone", table_name="leads")
    op.drop_column("leads", "email_key")
    op.drop_column("leads", "phone_key")
    drop_tables(op)
