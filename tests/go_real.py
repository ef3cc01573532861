"""A small, real GO enrichment for tests: hypergeometric tests of as-annotated terms, BH and the
paper's Bonferroni, written in the GO stage's ``summary.json`` keys.

Study set of a feature: the proteins in its top quarter of activations. Terms with fewer than
three annotated proteins are not tested.
"""

from __future__ import annotations

import gzip
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import false_discovery_control, hypergeom


def go_levels(obo: Path) -> dict[str, int]:
    """Level (shortest is_a path to a root) of every non-obsolete GO term."""
    parents: dict[str, list[str]] = {}
    current: str | None = None
    with gzip.open(obo, "rt") as handle:
        for line in handle:
            if line.startswith("id: GO:"):
                current = line[4:].strip()
                parents[current] = []
            elif line.startswith("is_a: ") and current:
                parents[current].append(line[6:16])
            elif line.startswith("[Typedef]"):
                current = None
    children: dict[str, list[str]] = {}
    for term, ps in parents.items():
        for p in ps:
            children.setdefault(p, []).append(term)
    level = {t: 0 for t, ps in parents.items() if not ps}
    queue = deque(level)
    while queue:
        t = queue.popleft()
        for c in children.get(t, []):
            if c not in level:
                level[c] = level[t] + 1
                queue.append(c)
    return level


def enrich_columns(
    acts: np.ndarray, annotations: list[set[str]], alpha: float = 0.05
) -> dict[str, np.ndarray]:
    """Every test as columns (feature_index, go_id, counts, p, q (BH), p_bonferroni, fold)."""
    terms = sorted({t for a in annotations for t in a})
    incidence = np.array([[t in a for t in terms] for a in annotations], dtype=bool)
    keep = incidence.sum(0) >= 3
    incidence, terms = incidence[:, keep], [t for t, k in zip(terms, keep, strict=True) if k]
    active = acts > np.quantile(acts, 0.75, axis=0)
    k = active.T.astype(int) @ incidence.astype(int)  # [features, terms]
    n_study, n_term, n_pop = active.sum(0)[:, None], incidence.sum(0)[None, :], len(acts)
    p = hypergeom.sf(k - 1, n_pop, n_term, n_study)
    q = false_discovery_control(p.ravel(), method="bh").reshape(p.shape)
    expected = n_study * n_term / n_pop
    fold = np.divide(k, expected, out=np.zeros(k.shape), where=expected > 0)
    # conditional-free sample odds ratio of the 2x2 table (inf when a cell is empty)
    a, b = k, n_study - k
    c, d = n_term - k, n_pop - n_study - n_term + k
    with np.errstate(divide="ignore", invalid="ignore"):
        odds = np.where(b * c > 0, (a * d) / np.maximum(b * c, 1), np.inf)
    f_idx, t_idx = np.indices(p.shape)
    study = np.broadcast_to(n_study, p.shape)
    pop_hits = np.broadcast_to(n_term, p.shape)
    return {
        "feature_index": f_idx.ravel(),
        "term_index": t_idx.ravel(),
        "go_id": np.array(terms, dtype="U10")[t_idx.ravel()],
        "study_hits": k.ravel(),
        "study_size": study.ravel(),
        "pop_hits": pop_hits.ravel(),
        "pop_size": np.full(p.size, n_pop),
        "fold_enrichment": fold.ravel(),
        "odds_ratio": odds.ravel().astype(float),
        "p_value": p.ravel(),
        "q_value": q.ravel(),
        "p_bonferroni": np.minimum(p.ravel() * p.size, 1.0),
    }


def summarize(
    cols: dict[str, np.ndarray], n_features: int, levels: dict[str, int], alpha: float = 0.05
) -> dict[str, Any]:
    """The GO stage's summary keys (hit rates, hits per level) from ``enrich_columns``."""
    out: dict[str, Any] = {"n_features": n_features, "n_tests": int(cols["p_value"].size)}
    for label, column in (("bh", "q_value"), ("bonferroni", "p_bonferroni")):
        sig = cols[column] < alpha
        n_any = int(np.unique(cols["feature_index"][sig]).size)
        out[label] = {
            "features_with_hit": n_any,
            "pct_features_with_hit": round(100.0 * n_any / n_features, 3),
            "n_significant_tests": int(sig.sum()),
        }
    sig = cols["q_value"] < alpha
    lv = np.array([levels.get(t, -1) for t in cols["go_id"][sig]], dtype=int)
    feats = cols["feature_index"][sig]
    out["hits_per_level"] = {
        "by_level": {
            str(int(v)): {"hits": int((lv == v).sum()), "features": int(np.unique(feats[lv == v]).size)}
            for v in np.unique(lv)
        }
    }  # fmt: skip
    out["n_stored_hits"] = int(sig.sum())
    return out
