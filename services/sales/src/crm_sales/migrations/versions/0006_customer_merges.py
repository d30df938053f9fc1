"""customers' merges followed in sales: what each moved, for an exact undo

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customer_merges",
        sa.Column("merge_id", sa.String(length=36), nullable=False),
        sa.Column("record_type", sa.String(length=10), nullable=False),
        sa.Column("survivor_id", sa.String(length=36), nullable=False),
        sa.Column("merged_ids", sa.ARRAY(sa.String(length=36)), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("moves", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("moved_back", sa.Integer(), nullable=False),
        sa.Column("followed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("undone_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.PrimaryKeyConstraint("merge_id", name=op.f("pk_customer_merges")),
    )
    op.create_index(op.f("ix_customer_merges_tenant_id"), "customer_merges", ["tenant_id"], unique=False)
    # Merges re-point references by account or contact id: without these, each would scan the table.
    for table, column in (
        ("leads", "converted_account_id"),
        ("leads", "converted_contact_id"),
        ("opportunities", "account_id"),
        ("opportunities", "contact_id"),
        ("quotes", "account_id"),
        ("quotes", "contact_id"),
        ("contracts", "account_id"),
        ("orders", "account_id"),
        ("payment_plans", "account_id"),
        ("payments", "account_id"),
    ):
        op.create_index(f"ix_{table}_tenant_{column}", table, ["tenant_id", column], unique=False)


def downgrade() -> None:
    for table, column in (
        ("payments", "account_id"),
        ("payment_plans", "account_id"),
        ("orders", "account_id"),
        ("contracts", "account_id"),
        ("quotes", "contact_id"),
        ("quotes", "account_id"),
        ("opportunities", "contact_id"),
        ("opportunities", "account_id"),
        ("leads", "converted_contact_id"),
        ("leads", "converted_account_id"),
    ):
        op.drop_index(f"ix_{table}_tenant_{column}", table_name=table)
    op.drop_index(op.f("ix_customer_merges_tenant_id"), table_name="customer_merges")
    op.drop_table("customer_merges")
