"""The session's direct endpoint when hole punching moved it off the relay (issue 12).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 02:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("relay_leases") as batch:
        batch.add_column(sa.Column("punched_endpoint", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("relay_leases") as batch:
        batch.drop_column("punched_endpoint")
