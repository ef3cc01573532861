"""amino-acid profile per feature: share of its activation mass on each residue type, the
residues behind it, its dominant type and whether it is a single-type detector

Revision ID: 0004_aa_profile
Revises: 0003
Create Date: 2026-12-03 16:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_aa_profile"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("aa_profile", "aa_n_residues", "aa_top", "aa_top_share", "aa_detector")


def upgrade() -> None:
    with op.batch_alter_table("features", schema=None) as batch_op:
        batch_op.add_column(sa.Column("aa_profile", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("aa_n_residues", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("aa_top", sa.String(length=1), nullable=True))
        batch_op.add_column(sa.Column("aa_top_share", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("aa_detector", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("features", schema=None) as batch_op:
        for name in reversed(COLUMNS):
            batch_op.drop_column(name)
