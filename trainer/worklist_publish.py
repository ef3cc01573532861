"""Load one dictionary's worklist (``worklist/{name}/``) into the open publish transaction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from app.store.bulk import bulk_insert_columns
from app.store.schema import AnalysisSummary, GoWorklistCandidate, Sae
from trainer.analysis_files import load_columns
from trainer.go.later_snapshot import GROUP_ORDER
from trainer.layout import RunLayout

CONFIRMED_NAMES: list[str | None] = [None, *GROUP_ORDER]  # code 0 = not gained


def load_worklist(
    session: Session,
    workdir: Path,
    sae: Sae,
    name: str,
    feature_ids: list[int],
    protein_ids: list[int],
    known_terms: set[str],
) -> int:
    """Insert the candidates and the summary (kind ``worklist``); returns rows inserted."""
    files = RunLayout(workdir).worklist(name)
    if not files.done.exists() or not files.candidates.exists():
        return 0
    summary = json.loads(files.summary.read_text())
    session.add(AnalysisSummary(sae_id=sae.id, kind="worklist", payload=summary))
    cols = load_columns(files.candidates)
    go_ids = cols["go_id"].astype(str)
    keep = np.array([g in known_terms for g in go_ids.tolist()], dtype=bool)
    columns = {
        "feature_id": [feature_ids[f] for f in cols["feature_index"][keep].tolist()],
        "go_id": go_ids[keep].tolist(),
        "protein_id": [protein_ids[r] for r in cols["protein_row"][keep].tolist()],
        "rank": cols["rank"][keep].tolist(),
        "activation": cols["activation"][keep].astype(float).tolist(),
        "confirmed": [CONFIRMED_NAMES[c] for c in cols["confirmed"][keep].tolist()],
        "baseline_rate": cols["baseline_rate"][keep].tolist(),
    }
    return bulk_insert_columns(session, GoWorklistCandidate, columns, {"sae_id": sae.id})
