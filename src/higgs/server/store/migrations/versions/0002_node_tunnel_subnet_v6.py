"""Nodes: the IPv6 tunnel prefix of a node that forwards IPv6 (NAT66).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 17:50:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    # Nullable: nodes registered before this revision (and nodes without IPv6) have none.
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("tunnel_subnet_v6", sa.String(length=43), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("tunnel_subnet_v6")
