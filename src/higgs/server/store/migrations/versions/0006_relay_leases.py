"""UDP relay port leases (one row per port held by a session, issue 11).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 21:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "relay_leases",
        sa.Column("relay_address", sa.String(length=64), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("leased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client_seen", sa.String(length=64), nullable=True),
        sa.Column("node_seen", sa.String(length=64), nullable=True),
        sa.Column("bound_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_relay_leases_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("relay_address", "port", name=op.f("pk_relay_leases")),
        sa.UniqueConstraint("session_id", name=op.f("uq_relay_leases_session_id")),
    )


def downgrade() -> None:
    op.drop_table("relay_leases")
