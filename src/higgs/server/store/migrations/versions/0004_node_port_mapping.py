"""Nodes: the router port mapping a node announces and the probe that verifies it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 21:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mapped_endpoint", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("mapped_method", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("probe_nonce", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("mapped_verified_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("mapped_verified_at")
        batch_op.drop_column("probe_nonce")
        batch_op.drop_column("mapped_method")
        batch_op.drop_column("mapped_endpoint")
