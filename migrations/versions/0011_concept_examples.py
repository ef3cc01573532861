"""Concept examples: per concept and best-aligned feature, a protein it fires on with the
concept's labels laid on its sequence (the Concept page reads them instead of the label files)

Revision ID: 0011_concept_examples
Revises: 0010_domain_enrichment
Create Date: 2026-12-03 19:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_concept_examples"
down_revision: str | None = "0010_domain_enrichment"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "concept_examples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sae_id", sa.Integer(), nullable=False),
        sa.Column("feature_id", sa.Integer(), nullable=False),
        sa.Column("concept_id", sa.Integer(), nullable=False),
        sa.Column("protein_id", sa.Integer(), nullable=False),
        sa.Column("structure_id", sa.Integer(), nullable=True),
        sa.Column("pdb_chain", sa.String(length=64), nullable=False),
        sa.Column("via", sa.Text(), nullable=False),
        sa.Column("labels", sa.Text(), nullable=False),
        sa.Column("label_file", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(["concept_id"], ["concepts.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["feature_id"], ["features.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["protein_id"], ["proteins.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["sae_id"], ["saes.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["structure_id"], ["structures.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("concept_id", "feature_id"),
    )


def downgrade() -> None:
    op.drop_table("concept_examples")
