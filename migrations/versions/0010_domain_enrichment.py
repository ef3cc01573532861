"""Domain families per feature: Pfam / PROSITE enrichment hits and the feature's top family

domain_enrichments (one row per feature × family test kept, per protocol) and
features.n_domain_hits / n_domain_hits_length / top_domain / top_domain_source.

Revision ID: 0010_domain_enrichment
Revises: 0009_publication_id
Create Date: 2026-12-05 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_domain_enrichment"
down_revision: str | None = "0009_publication_id"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("features", schema=None) as batch_op:
        batch_op.add_column(sa.Column("n_domain_hits", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("n_domain_hits_length", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("top_domain", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("top_domain_source", sa.String(length=8), nullable=True))
        batch_op.create_index("ix_features_top_domain", ["top_domain"], unique=False)
    op.create_table(
        "domain_enrichments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sae_id", sa.Integer(), nullable=False),
        sa.Column("feature_id", sa.Integer(), nullable=False),
        sa.Column("accession", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("study_hits", sa.Integer(), nullable=False),
        sa.Column("study_size", sa.Integer(), nullable=False),
        sa.Column("pop_hits", sa.Integer(), nullable=False),
        sa.Column("pop_size", sa.Integer(), nullable=False),
        sa.Column("odds_ratio", sa.Float(), nullable=True),
        sa.Column("fold_enrichment", sa.Float(), nullable=False),
        sa.Column("p_value", sa.Float(), nullable=False),
        sa.Column("q_value", sa.Float(), nullable=True),
        sa.Column("p_bonferroni", sa.Float(), nullable=False),
        sa.Column("p_length", sa.Float(), nullable=True),
        sa.Column("q_length", sa.Float(), nullable=True),
        sa.Column("protocol", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["feature_id"], ["features.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["sae_id"], ["saes.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_domain_enrichments_feature", "domain_enrichments",
                    ["feature_id", "q_value"])  # fmt: skip
    op.create_index("ix_domain_enrichments_accession", "domain_enrichments", ["accession"])
    op.create_index("ix_domain_enrichments_sae", "domain_enrichments", ["sae_id"])


def downgrade() -> None:
    op.drop_table("domain_enrichments")
    with op.batch_alter_table("features", schema=None) as batch_op:
        batch_op.drop_index("ix_features_top_domain")
        batch_op.drop_column("top_domain_source")
        batch_op.drop_column("top_domain")
        batch_op.drop_column("n_domain_hits_length")
        batch_op.drop_column("n_domain_hits")
