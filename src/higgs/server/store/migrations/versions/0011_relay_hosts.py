"""Relay hosts: each `bosonserver relay` registers its address, ports, probe port and
WebSocket URL, and heartbeats with a stats snapshot (issue 14 item 3).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 05:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "relay_hosts",
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("ports", sa.String(length=16), nullable=False),
        sa.Column("probe_port", sa.Integer(), nullable=False),
        sa.Column("ws_url", sa.String(length=300), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_relay_hosts")),
    )


def downgrade() -> None:
    op.drop_table("relay_hosts")
