"""Scale-out: secrets shared by every instance, and registration nonces already spent.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 05:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cluster_secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_cluster_secrets")),
    )
    op.create_table(
        "used_nonces",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_used_nonces")),
    )
    op.create_index(op.f("ix_used_nonces_expires_at"), "used_nonces", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_used_nonces_expires_at"), table_name="used_nonces")
    op.drop_table("used_nonces")
    op.drop_table("cluster_secrets")
