"""feature effects: per feature, the mean change in ESM2's amino-acid log-probabilities when it is
set to its typical activation against zero at its top residues (trainer/effects.py)

Revision ID: 0005_feature_effects
Revises: 0004_aa_profile
Create Date: 2026-12-03 15:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_feature_effects"
down_revision: str | None = "0004_aa_profile"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("features", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lm_effect", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("features", schema=None) as batch_op:
        batch_op.drop_column("lm_effect")
