"""Summary figures of one dictionary's GO enrichment: hit rates, hits per level and namespace."""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer.go.enrichment import EnrichmentResult
from trainer.go.ontology import Ontology


def pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 3) if whole else 0.0


def hit_rates(result: EnrichmentResult, alpha: float) -> dict[str, Any]:
    """% of features with >= 1 significant term under our (strict) protocol — BH, Bonferroni
    within the feature and namespace, and length-adjusted BH — overall and per namespace."""
    c = result.columns
    out: dict[str, Any] = {}
    for label, column in (
        ("bh", "q_value"), ("bonferroni", "p_bonferroni"), ("length_bh", "q_length")
    ):  # fmt: skip
        if column not in c:  # the length-adjusted test was not run
            continue
        sig = c[column] < alpha
        n_any = np.unique(c["feature_index"][sig]).size
        per_ns = {
            ns: pct(np.unique(c["feature_index"][sig & (c["namespace"] == ns)]).size, result.n_features)
            for ns in ("BP", "MF", "CC")
        }  # fmt: skip
        out[label] = {
            "features_with_hit": int(n_any),
            "pct_features_with_hit": pct(n_any, result.n_features),
            # Dead latents can have no hit: SAEs with many dead latents compare with neurons here.
            "pct_active_features_with_hit": pct(n_any, result.n_active_features),
            "pct_features_with_hit_by_namespace": per_ns,
            "n_significant_tests": int(sig.sum()),
        }
    return out


def per_level(result: EnrichmentResult, ontology: Ontology, alpha: float) -> dict[str, Any]:
    """BH-significant hits (and distinct features) at each level and depth of the DAG."""
    c = result.columns
    sig = c["q_value"] < alpha
    out: dict[str, Any] = {}
    for attr in ("level", "depth"):
        values = np.array([getattr(ontology.terms[t], attr) for t in c["go_id"][sig]], dtype=int)
        feats = c["feature_index"][sig]
        table = {}
        for v in np.unique(values):
            at = values == v
            table[str(int(v))] = {
                "hits": int(at.sum()),
                "features": int(np.unique(feats[at]).size),
                "most_specific_hits": int((c["is_most_specific"][sig] & at).sum()),
            }
        out[f"by_{attr}"] = table
    return out


def summarize(result: EnrichmentResult, ontology: Ontology, alpha: float) -> dict[str, Any]:
    """Everything summary.json holds about one dictionary's own result."""
    rates = hit_rates(result, alpha)
    return {
        "n_features": result.n_features,
        "n_active_features": result.n_active_features,
        "n_tests": result.n_tests,
        "n_stored_hits": int(result.columns["p_value"].size),
        **rates,
        "hits_per_level": per_level(result, ontology, alpha),
    }
