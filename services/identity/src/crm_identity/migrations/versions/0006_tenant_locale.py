"""tenant locale: the company's language, chosen at sign-up (its default roles, pipeline and duplicate rules
are named in it); companies that signed up before are Chinese, the sign-up default

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "tenants", sa.Column("locale", sa.String(length=10), nullable=False, server_default="zh-CN")
    )


def downgrade() -> None:
    op.drop_column("tenants", "locale")
