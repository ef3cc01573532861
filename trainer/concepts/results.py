"""What the concepts stage writes: the concept table, kept pairs and the per-dictionary summary.

"Best feature of a concept" is chosen by TRAIN F1 (each feature at its own train-chosen
threshold) and reported with its TEST F1; a concept is *associated* (InterPLM) when that test
F1 exceeds ``associated_f1``. Nothing is chosen on test chains: no "best test F1" over
features is kept (on the demo it picked, for gpsite_ZN, a feature with train F1 0.03). Beside it,
``f1_fire_everywhere_test``: the test F1 of flagging every residue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from app.atomic_write import write_atomic
from app.stage_summaries import ConceptsSummary
from trainer.analysis_files import save_columns
from trainer.concepts.labels import ConceptSet, segment_starts
from trainer.concepts.metrics import METRIC_NAMES, ConceptCounts, choose_thresholds
from trainer.layout import ConceptFiles

if TYPE_CHECKING:
    from trainer.concepts.stage import ConceptsConfig

F1_BINS = np.linspace(0.0, 1.0, 11)


def concept_records(concepts: list[ConceptSet]) -> list[dict[str, Any]]:
    """One JSON-able record per concept: provenance and chain/residue/positive/site counts."""
    records = []
    for c in concepts:
        per_split = {}
        for role in ("train", "test"):
            chains = c.chains(role)  # type: ignore[arg-type]
            per_split[role] = {
                "n_chains": len(chains),
                "n_residues": int(sum(ch.n_labelled for ch in chains)),
                "n_positive": int(sum(int(ch.labels.sum()) for ch in chains)),
                "n_sites": int(sum(len(segment_starts(ch.labels)) for ch in chains)),
                "source_splits": sorted({s for ch in chains for s in ch.source_splits}),
            }
        records.append(
            {
                "name": c.name,
                "description": c.description,
                "source": c.source,
                "file": c.path.name,
                **{
                    k: per_split["train"][k] + per_split["test"][k]  # type: ignore[operator]
                    for k in ("n_chains", "n_residues", "n_positive", "n_sites")
                },
                "splits": per_split,
                "file_counts": dict(c.counts),
            }
        )
    return records


def _kept_features(train_f1: np.ndarray, test_f1: np.ndarray, top: int, keep: float) -> np.ndarray:
    order = np.lexsort((-test_f1, -train_f1))[:top]
    return np.union1d(order, np.flatnonzero((train_f1 > keep) | (test_f1 > keep)))


def _f1_everywhere(counts: ConceptCounts) -> float:
    base = counts.n_positive / counts.n_residues if counts.n_residues else 0.0
    return 2 * base / (1 + base)


def dictionary_results(
    files: ConceptFiles,
    name: str,
    by_concept: list[tuple[str, ConceptCounts, ConceptCounts]],
    cfg: ConceptsConfig,
    feature_max: np.ndarray,
    records: list[dict[str, Any]],
    timing: dict[str, float],
) -> dict[str, Any]:
    """Write ``concepts/{name}/alignments.npz`` and its ``summary.json``; return the summary."""
    columns: dict[str, list[np.ndarray]] = {
        k: [] for k in ("feature_index", "concept", "threshold", "split", *METRIC_NAMES)
    }
    best: list[dict[str, Any]] = []
    not_evaluable: list[str] = []
    linked_features: set[int] = set()
    for concept, train, test in by_concept:
        if train.n_positive == 0 or test.n_positive == 0:
            not_evaluable.append(concept)
            continue
        pair = choose_thresholds(train.metrics(), test.metrics(), cfg.thresholds)
        keep = _kept_features(pair.train["f1"], pair.test["f1"], cfg.top_features, cfg.keep_f1)
        for split, metrics in (("train", pair.train), ("test", pair.test)):
            columns["feature_index"].append(keep.astype(np.int32))
            columns["concept"].append(np.full(len(keep), concept))
            columns["threshold"].append(pair.threshold[keep].astype(np.float32))
            columns["split"].append(np.full(len(keep), split))
            for m in METRIC_NAMES:
                columns[m].append(metrics[m][keep].astype(np.float32))
        top = int(np.lexsort((-pair.test["f1"], -pair.train["f1"]))[0])
        both = (pair.train["f1"] > cfg.associated_f1) & (pair.test["f1"] > cfg.associated_f1)
        linked_features.update(int(f) for f in np.flatnonzero(both))
        best.append(
            {
                "concept": concept,
                "feature": top,
                "threshold": float(pair.threshold[top]),
                "f1_train": float(pair.train["f1"][top]),
                **{f"{m}_test": float(pair.test[m][top]) for m in METRIC_NAMES},
                "n_features_test_f1_gt": int((pair.test["f1"] > cfg.associated_f1).sum()),
                # the trivial predictor (every residue fires): F1 = 2p / (1 + p), p = base rate
                "f1_fire_everywhere_test": _f1_everywhere(test),
            }
        )
    arrays = {
        k: np.concatenate(v) if v else np.zeros(0, dtype=np.float32) for k, v in columns.items()
    }
    save_columns(files.alignments, arrays)

    best_f1 = np.array([b["f1_test"] for b in best], dtype=np.float64)
    associated = [
        {k: b[k] for k in ("concept", "feature", "threshold", "f1_train", "f1_test")}
        for b in best
        if b["f1_test"] > cfg.associated_f1
    ]
    summary: dict[str, Any] = {
        "dictionary": name,
        "n_features": int(feature_max.shape[0]),
        "n_dead_on_labelled_chains": int((feature_max <= 0).sum()),
        "thresholds": list(cfg.thresholds),
        "threshold_and_feature_chosen_on": "train",
        "metrics_reported_on": "test",
        "n_concepts": len(by_concept),
        "n_concepts_evaluated": len(best),
        "not_evaluable": not_evaluable,
        "associated_f1": cfg.associated_f1,
        "n_concepts_associated": len(associated),
        "concepts_associated": associated,
        "n_features_associated": len(linked_features),
        "best_per_concept": best,
        "best_f1_distribution": {
            "bin_edges": F1_BINS.tolist(),
            "counts": np.histogram(best_f1, bins=F1_BINS)[0].tolist(),
            "mean": float(best_f1.mean()) if len(best_f1) else None,
            "median": float(np.median(best_f1)) if len(best_f1) else None,
            "max": float(best_f1.max()) if len(best_f1) else None,
        },
        "corpus": {
            role: {
                "n_chains": sum(r["splits"][role]["n_chains"] for r in records),
                "n_residues": sum(r["splits"][role]["n_residues"] for r in records),
            }
            for role in ("train", "test")
        },
        "timing": timing,
    }
    # the document the run summary and the app read (the concept index, the concept page)
    write_atomic(files.summary, ConceptsSummary.model_validate(summary).to_json(indent=1))
    return summary
