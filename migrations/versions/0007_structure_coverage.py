"""structure coverage: each top example names the structure chain that shows the feature best,
the share of the feature's activation mass on residues that chain resolves, and whether it
resolves the peak residue

Revision ID: 0007_structure_coverage
Revises: 0006_go_protocols
Create Date: 2026-12-03 16:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_structure_coverage"
down_revision: str | None = "0006_go_protocols"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FK = "fk_top_examples_structure_id_structures"


def upgrade() -> None:
    with op.batch_alter_table("top_examples", schema=None) as batch_op:
        batch_op.add_column(sa.Column("structure_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("structure_share", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("structure_peak_covered", sa.Boolean(), nullable=True))
        batch_op.create_foreign_key(FK, "structures", ["structure_id"], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("top_examples", schema=None) as batch_op:
        batch_op.drop_constraint(FK, type_="foreignkey")
        batch_op.drop_column("structure_peak_covered")
        batch_op.drop_column("structure_share")
        batch_op.drop_column("structure_id")
