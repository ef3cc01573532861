"""A GO term's worklists counted from the index alone: ``ix_go_worklist_term`` becomes
(go_id, feature_id, sae_id, confirmed), so the GO page's per-list counts (a broad term has tens
of thousands of candidates) read a covering index in group order instead of every row
(8.4 -> 3.2 ms for GO:0003824 on the demo store).

Revision ID: 0012_worklist_term_lists
Revises: 0011_concept_examples
Create Date: 2026-12-04 16:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012_worklist_term_lists"
down_revision: str | None = "0011_concept_examples"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_go_worklist_term", table_name="go_worklist")
    op.create_index(
        "ix_go_worklist_term", "go_worklist", ["go_id", "feature_id", "sae_id", "confirmed"]
    )


def downgrade() -> None:
    op.drop_index("ix_go_worklist_term", table_name="go_worklist")
    op.create_index("ix_go_worklist_term", "go_worklist", ["go_id", "sae_id"])
