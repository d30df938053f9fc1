"""import jobs keep the importer's options (the kit's import tables, crm_kit.imports.models, have them)

Revision ID: 0104_import_options
Revises: 0103_timeline_entries
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0104_import_options"
down_revision = "0103_timeline_entries"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "import_jobs",
        sa.Column("options", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
    )


def downgrade() -> None:
    op.drop_column("import_jobs", "options")
