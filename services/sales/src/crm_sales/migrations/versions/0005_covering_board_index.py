"""the board index covers what the stage totals read, so they are an index-only scan

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_opportunities_board", table_name="opportunities")
    op.create_index(
        "ix_opportunities_board",
        "opportunities",
        ["tenant_id", "pipeline_id", "stage_id", "stage_entered_at"],
        postgresql_where="status = 'open'",
        postgresql_include=["currency", "amount", "probability", "owner_id", "department_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_opportunities_board", table_name="opportunities")
    op.create_index(
        "ix_opportunities_board",
        "opportunities",
        ["tenant_id", "pipeline_id", "stage_id", "stage_entered_at"],
        postgresql_where="status = 'open'",
    )
