"""pending sign-ups: a sign-up with an address that an unproven sign-up holds waits beside it (status
'pending') and takes it when it verifies the address; the one-holder-per-address index leaves them out

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _holder_index(where: str) -> None:
    op.drop_index("uq_users_email_holder", table_name="users")
    op.create_index("uq_users_email_holder", "users", ["email"], unique=True, postgresql_where=sa.text(where))


def upgrade() -> None:
    _holder_index("status NOT IN ('invited', 'pending')")


def downgrade() -> None:
    # Pending sign-ups never held their address: they go with the index that has no room for them.
    op.execute("DELETE FROM users WHERE status = 'pending'")
    _holder_index("status <> 'invited'")
