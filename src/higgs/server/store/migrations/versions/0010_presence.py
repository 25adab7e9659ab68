"""Scale-out: API instances and node presence (which instance holds a node's link).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 02:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_instances",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("relay_base", sa.String(length=300), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_instances")),
    )
    op.create_table(
        "node_presence",
        sa.Column("node_id", sa.String(length=32), nullable=False),
        sa.Column("instance_id", sa.String(length=64), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resync", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["node_id"],
            ["nodes.id"],
            name=op.f("fk_node_presence_node_id_nodes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_node_presence")),
    )
    op.create_index(
        op.f("ix_node_presence_instance_id"), "node_presence", ["instance_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_node_presence_instance_id"), table_name="node_presence")
    op.drop_table("node_presence")
    op.drop_table("api_instances")
