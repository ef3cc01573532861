"""Missing-annotation worklists: go_worklist (one row per candidate protein of a feature's GO hit)

Revision ID: 0008_worklist
Revises: 0007_structure_coverage
Create Date: 2026-12-04 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_worklist"
down_revision: str | None = "0007_structure_coverage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "go_worklist",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sae_id", sa.Integer(), nullable=False),
        sa.Column("feature_id", sa.Integer(), nullable=False),
        sa.Column("go_id", sa.String(length=16), nullable=False),
        sa.Column("protein_id", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("activation", sa.Float(), nullable=False),
        sa.Column("confirmed", sa.String(length=16), nullable=True),
        sa.Column("baseline_rate", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["sae_id"], ["saes.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["feature_id"], ["features.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["go_id"], ["go_terms.id"]),
        sa.ForeignKeyConstraint(["protein_id"], ["proteins.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_go_worklist_feature", "go_worklist", ["feature_id", "go_id", "rank"])
    op.create_index("ix_go_worklist_term", "go_worklist", ["go_id", "sae_id"])
    op.create_index("ix_go_worklist_sae", "go_worklist", ["sae_id"])


def downgrade() -> None:
    op.drop_index("ix_go_worklist_sae", table_name="go_worklist")
    op.drop_index("ix_go_worklist_term", table_name="go_worklist")
    op.drop_index("ix_go_worklist_feature", table_name="go_worklist")
    op.drop_table("go_worklist")
