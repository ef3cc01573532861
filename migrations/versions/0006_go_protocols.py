"""GO protocols: the seed paper's (goatools defaults) beside ours, per hit and per dictionary

go_enrichments.protocol ("strict" | "paper"; existing rows are "strict"), q_value nullable (the
paper protocol has no BH), features.n_go_hits_paper, and go_protocols (statement, settings,
figures per dictionary and protocol).

Revision ID: 0006_go_protocols
Revises: 0005_feature_effects
Create Date: 2026-11-27 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_go_protocols"
down_revision: str | None = "0005_feature_effects"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("go_enrichments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("protocol", sa.String(length=16), server_default="strict", nullable=False)
        )
        batch_op.alter_column("q_value", existing_type=sa.Float(), nullable=True)
    with op.batch_alter_table("features", schema=None) as batch_op:
        batch_op.add_column(sa.Column("n_go_hits_paper", sa.Integer(), nullable=True))
    op.create_table(
        "go_protocols",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sae_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=16), nullable=False),
        sa.Column("statement", sa.Text(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["sae_id"], ["saes.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sae_id", "name"),
    )


def downgrade() -> None:
    op.drop_table("go_protocols")
    with op.batch_alter_table("features", schema=None) as batch_op:
        batch_op.drop_column("n_go_hits_paper")
    op.execute("DELETE FROM go_enrichments WHERE protocol <> 'strict'")
    with op.batch_alter_table("go_enrichments", schema=None) as batch_op:
        batch_op.alter_column("q_value", existing_type=sa.Float(), nullable=False)
        batch_op.drop_column("protocol")
