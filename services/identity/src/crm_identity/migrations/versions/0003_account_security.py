"""account security: sign-in throttles instead of account locks, email verification

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_throttles",
        # sha256 of "<scope>:<email>|<client address>": no address or email stored in clear.
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_login_throttles")),
    )
    op.create_index("ix_login_throttles_last_failure_at", "login_throttles", ["last_failure_at"])
    op.drop_column("users", "failed_logins")
    op.drop_column("users", "locked_until")
    op.add_column("users", sa.Column("email_verified_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", sa.Column("email_verification_hash", sa.String(length=64), nullable=True))
    op.add_column(
        "users", sa.Column("email_verification_expires_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_unique_constraint(
        op.f("uq_users_email_verification_hash"), "users", ["email_verification_hash"]
    )
    # Who is here already keeps signing in: their addresses count as proven.
    op.execute("UPDATE users SET email_verified_at = now() WHERE status <> 'invited'")
    # An address is held by one signed-up or joined user; pending invitations (of several companies) may wait
    # beside it, and the first one accepted releases an unverified holder.
    op.drop_constraint("uq_users_email", "users", type_="unique")
    op.create_index(
        "uq_users_email_holder",
        "users",
        ["email"],
        unique=True,
        postgresql_where=sa.text("status <> 'invited'"),
    )
    op.create_index("ix_users_email", "users", ["email"])


def downgrade() -> None:
    op.drop_index("ix_users_email", table_name="users")
    op.drop_index("uq_users_email_holder", table_name="users")
    op.execute(
        "DELETE FROM users WHERE status = 'invited' AND email IN (SELECT email FROM users GROUP BY email HAVING count(*) > 1)"
    )
    op.create_unique_constraint("uq_users_email", "users", ["email"])
    op.drop_constraint(op.f("uq_users_email_verification_hash"), "users", type_="unique")
    op.drop_column("users", "email_verification_expires_at")
    op.drop_column("users", "email_verification_hash")
    op.drop_column("users", "email_verified_at")
    op.add_column("users", sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column("users", sa.Column("failed_logins", sa.Integer(), nullable=False, server_default="0"))
    op.drop_table("login_throttles")
