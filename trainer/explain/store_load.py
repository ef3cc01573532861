"""Load a dictionary's explain outputs into the store, inside the publish transaction.

``publish`` calls :func:`load_explanations` from its ``load(session, run)`` callback once the
dictionary's features exist: one ``Explanation`` per explained feature (text, model, prompt hash,
prompt, sample and prediction details), one ``ExplanationScore`` (``pearson_r``) per scored one,
``Feature.explanation_score`` for sorting, and the summary/comparison as an ``AnalysisSummary``
of kind ``explanations``. Offline labels go to ``Feature.auto_label`` with their source.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.store.bulk import bulk_insert, reserve_ids
from app.store.schema import AnalysisSummary, Explanation, ExplanationScore, Feature
from trainer.explain.labels import AutoLabel
from trainer.layout import RunLayout

DETAIL_KEYS = ("explain_rows", "explain_activations", "test_accessions", "test_rows", "actual")


def load_explanations(
    session: Session, workdir: Path, name: str, sae_id: int, feature_ids: Mapping[int, int]
) -> int:
    """Insert ``explain/{name}/`` for SAE ``sae_id``; ``feature_ids``: latent index -> Feature.id."""
    files = RunLayout(workdir).explanations(name)
    path = files.explanations
    if not path.exists():
        return 0
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    explained = [r for r in recs if r.get("text") and r["feature_index"] in feature_ids]
    ids = reserve_ids(session, Explanation, len(explained))
    rows: list[dict[str, Any]] = []
    scores: list[dict[str, Any]] = []
    for eid, r in zip(ids, explained, strict=True):
        details = {k: r.get(k) for k in DETAIL_KEYS}
        details.update(
            status=r["status"], reason=r.get("reason"), score_prompt=r.get("score_prompt")
        )
        rows.append(
            {
                "id": eid,
                "feature_id": feature_ids[r["feature_index"]],
                "text": r["text"],
                "model": r["model"],
                "prompt_hash": r["prompt_hash"],
                "prompt": r["prompt"],
                "details": details,
            }
        )
        if r["status"] == "scored":
            scores.append(
                {
                    "explanation_id": eid,
                    "method": "pearson_r",
                    "value": r["pearson_r"],
                    "p_value": r["p_value"],
                    "n": r["n"],
                    "details": {"predicted": r["predicted"], "actual": r["actual"]},
                }
            )
    bulk_insert(session, Explanation, rows)
    bulk_insert(session, ExplanationScore, scores)
    for r in explained:
        if r["status"] == "scored":
            session.execute(
                update(Feature)
                .where(Feature.id == feature_ids[r["feature_index"]])
                .values(explanation_score=r["pearson_r"] if r["pearson_r"] is not None else 0.0)
            )
    summary = files.summary
    if summary.exists():
        session.add(
            AnalysisSummary(
                sae_id=sae_id, kind="explanations", payload=json.loads(summary.read_text())
            )
        )
    session.flush()
    return len(rows)


def load_auto_labels(
    session: Session, labels: Mapping[int, AutoLabel], feature_ids: Mapping[int, int]
) -> int:
    """Write offline labels to ``Feature.auto_label`` / ``auto_label_source`` (e.g. ``auto:go``)."""
    n = 0
    for index, label in labels.items():
        if index in feature_ids:
            session.execute(
                update(Feature)
                .where(Feature.id == feature_ids[index])
                .values(auto_label=label.text, auto_label_source=label.source)
            )
            n += 1
    return n
