"""Offline feature labels, independent of Claude: the most specific significant GO term, or the
dominant Pfam family of the top proteins. Each label carries its source so the store and the UI
can mark it as automatic (``Feature.auto_label`` / ``Feature.auto_label_source``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

NAMESPACE_NAMES = {
    "BP": "biological process",
    "MF": "molecular function",
    "CC": "cellular component",
}


class GoHitLike(Protocol):
    """One feature × GO term enrichment result (as the GO stage records it)."""

    go_id: str
    name: str
    namespace: str
    depth: int
    q_value: float
    fold_enrichment: float
    is_most_specific: bool
    q_length: float | None  # length-stratified BH value; None where the run predates that test


@dataclass(frozen=True)
class GoHit:
    """A concrete :class:`GoHitLike` (for callers that hold plain records)."""

    go_id: str
    name: str
    namespace: str
    depth: int
    q_value: float
    fold_enrichment: float
    is_most_specific: bool = False
    q_length: float | None = None


@dataclass(frozen=True)
class AutoLabel:
    text: str
    source: str  # "auto:go" | "auto:pfam"
    evidence: str


# A label names a strong association only. On a proteome-sized corpus a dense feature (active on
# 80% of 18.5k human proteins) reaches q < 1e-30 with folds of 1.1-1.2, and its deepest such
# term ("positive regulation of cytosolic calcium ion concentration") misled more than it said.
MIN_LABEL_FOLD = 2.0


def go_label(
    hits: Iterable[GoHitLike], alpha: float = 0.05, min_fold: float = MIN_LABEL_FOLD
) -> AutoLabel | None:
    """The most specific significant term with at least ``min_fold`` enrichment that protein
    length does not explain (length-stratified q < alpha, where the run has that test):
    flagged most-specific first, then deepest, then lowest q."""
    significant = [
        h
        for h in hits
        if h.q_value < alpha
        and h.fold_enrichment >= min_fold
        and (h.q_length is None or h.q_length < alpha)
    ]
    if not significant:
        return None
    best = min(
        significant,
        key=lambda h: (not h.is_most_specific, -h.depth, h.q_value, -h.fold_enrichment, h.go_id),
    )
    ns = NAMESPACE_NAMES.get(best.namespace, best.namespace)
    return AutoLabel(
        text=f"{best.name} ({best.go_id}, {ns})",
        source="auto:go",
        evidence=f"q={best.q_value:.2g}"
        + ("" if best.q_length is None else f", length-adjusted q={best.q_length:.2g}")
        + f", fold={best.fold_enrichment:.1f}, depth={best.depth}",
    )


def pfam_label(top_pfams: Sequence[Iterable[str]], min_share: float = 0.5) -> AutoLabel | None:
    """The Pfam family shared by at least ``min_share`` of the top proteins (most shared wins)."""
    if not top_pfams:
        return None
    counts = Counter(f for fams in top_pfams for f in set(fams))
    if not counts:
        return None
    family, n = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if n / len(top_pfams) < min_share:
        return None
    return AutoLabel(
        text=f"Pfam {family}",
        source="auto:pfam",
        evidence=f"{n} of the top {len(top_pfams)} proteins",
    )


def auto_labels(
    go_hits: Mapping[int, Iterable[GoHitLike]],
    top_pfams: Mapping[int, Sequence[Iterable[str]]],
    alpha: float = 0.05,
    min_share: float = 0.5,
    min_fold: float = MIN_LABEL_FOLD,
) -> dict[int, AutoLabel]:
    """Labels per feature index: GO first (more specific), Pfam where GO has nothing."""
    out: dict[int, AutoLabel] = {}
    for feature in sorted(set(go_hits) | set(top_pfams)):
        label = go_label(go_hits.get(feature, ()), alpha, min_fold) or pfam_label(
            top_pfams.get(feature, ()), min_share
        )
        if label is not None:
            out[feature] = label
    return out
