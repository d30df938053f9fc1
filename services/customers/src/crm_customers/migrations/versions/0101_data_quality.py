"""data quality: duplicate rules, scans and groups, merges with undo data, import jobs, files and errors

Revision ID: 0101_data_quality
Revises: 0001
Create Date: 2026-11-23 03:00:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0101_data_quality"
down_revision = "0001"
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "duplicate_rules",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("record_type", sa.String(10), nullable=False),
        sa.Column("match", sa.String(30), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("on_create", sa.String(10), nullable=False),
        sa.Column("on_update", sa.String(10), nullable=False),
        sa.Column("on_import", sa.String(10), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
    )
    op.create_index("ix_duplicate_rules_tenant_id", "duplicate_rules", ["tenant_id"])
    op.create_index("ix_duplicate_rules_tenant_type", "duplicate_rules", ["tenant_id", "record_type", "id"])

    op.create_table(
        "duplicate_scans",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("record_type", sa.String(10), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("records_scanned", sa.BigInteger(), nullable=False),
        sa.Column("groups_found", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(36), nullable=False),
        _ts("created_at"),
        _ts("finished_at", True),
        _ts("lease_until", True),
    )
    op.create_index("ix_duplicate_scans_tenant_id", "duplicate_scans", ["tenant_id"])
    op.create_index("ix_duplicate_scans_tenant", "duplicate_scans", ["tenant_id", "id"])
    op.create_index(
        "ix_duplicate_scans_pending",
        "duplicate_scans",
        ["status"],
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )

    op.create_table(
        "duplicate_groups",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("scan_id", sa.String(36), nullable=False),
        sa.Column("record_type", sa.String(10), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("members", postgresql.JSONB(), nullable=False),
    )
    op.create_index("ix_duplicate_groups_tenant_id", "duplicate_groups", ["tenant_id"])
    op.create_index("ix_duplicate_groups_scan", "duplicate_groups", ["tenant_id", "scan_id", "score", "id"])

    op.create_table(
        "merges",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("record_type", sa.String(10), nullable=False),
        sa.Column("survivor_id", sa.String(36), nullable=False),
        sa.Column("merged_ids", postgresql.ARRAY(sa.String(36)), nullable=False),
        sa.Column("field_sources", postgresql.JSONB(), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("references_moved", sa.BigInteger(), nullable=False),
        sa.Column("merged_by", sa.String(36), nullable=False),
        _ts("merged_at"),
        _ts("undo_until"),
        _ts("undone_at", True),
        sa.Column("undo_data", postgresql.JSONB(), nullable=True),
    )
    op.create_index("ix_merges_tenant_id", "merges", ["tenant_id"])
    op.create_index("ix_merges_tenant", "merges", ["tenant_id", "id"])
    op.create_index("ix_merges_survivor", "merges", ["tenant_id", "survivor_id"])

    op.create_table(
        "import_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("target", sa.String(20), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("file_name", sa.String(300), nullable=False),
        sa.Column("format", sa.String(4), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("columns", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("mapping", postgresql.JSONB(), nullable=False),
        sa.Column("rows_total", sa.BigInteger(), nullable=False),
        sa.Column("rows_done", sa.BigInteger(), nullable=False),
        sa.Column("rows_created", sa.BigInteger(), nullable=False),
        sa.Column("rows_updated", sa.BigInteger(), nullable=False),
        sa.Column("rows_skipped", sa.BigInteger(), nullable=False),
        sa.Column("rows_failed", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("owner_id", sa.String(36), nullable=False),
        sa.Column("department_id", sa.String(36), nullable=False),
        sa.Column("created_by", sa.String(36), nullable=False),
        sa.Column("role_ids", postgresql.ARRAY(sa.String(36)), nullable=False),
        _ts("created_at"),
        _ts("started_at", True),
        _ts("finished_at", True),
        _ts("lease_until", True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("stats", postgresql.JSONB(), nullable=False),
    )
    op.create_index("ix_import_jobs_tenant_id", "import_jobs", ["tenant_id"])
    op.create_index("ix_import_jobs_tenant", "import_jobs", ["tenant_id", "id"])
    op.create_index(
        "ix_import_jobs_pending",
        "import_jobs",
        ["status"],
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )

    op.create_table(
        "import_file_chunks",
        sa.Column("job_id", sa.String(36), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_import_file_chunks_tenant_id", "import_file_chunks", ["tenant_id"])
    # Already compressed (xlsx is a zip) or cheap to store: skip TOAST compression work on upload.
    op.execute("ALTER TABLE import_file_chunks ALTER COLUMN data SET STORAGE EXTERNAL")

    op.create_table(
        "import_errors",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("row", sa.BigInteger(), nullable=False),
        sa.Column("column", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    op.create_index("ix_import_errors_tenant_id", "import_errors", ["tenant_id"])
    op.create_index("ix_import_errors_job", "import_errors", ["job_id", "row", "id"])

    # Fuzzy company-name matching (duplicate rules and scans): trigram similarity on the matching key.
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_accounts_name_key_trgm ON accounts USING gin (name_key gin_trgm_ops) "
        "WHERE deleted_at IS NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_accounts_name_key_trgm")
    for table in (
        "import_errors",
        "import_file_chunks",
        "import_jobs",
        "merges",
        "duplicate_groups",
        "duplicate_scans",
        "duplicate_rules",
    ):
        op.drop_table(table)
