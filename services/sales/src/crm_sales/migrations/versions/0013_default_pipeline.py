"""default pipeline: at most one pipeline per company is its default, where conversions and opportunities
that name no pipeline go; a company that already has pipelines gets its oldest as the default

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "pipelines", sa.Column("is_default", sa.Boolean(), nullable=False, server_default=sa.text("false"))
    )
    op.create_index(
        "uq_pipelines_default",
        "pipelines",
        ["tenant_id"],
        unique=True,
        postgresql_where=sa.text("is_default"),
    )
    # Ids are UUIDv7: the smallest is the oldest.
    op.execute(
        "UPDATE pipelines p SET is_default = true FROM "
        "(SELECT DISTINCT ON (tenant_id) id FROM pipelines ORDER BY tenant_id, id) o WHERE p.id = o.id"
    )


def downgrade() -> None:
    op.drop_index("uq_pipelines_default", table_name="pipelines")
    op.drop_column("pipelines", "is_default")
