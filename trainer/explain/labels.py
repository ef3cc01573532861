"""Offline feature labels, independent of Claude. Each label carries its source so the store and
the UI can mark it as automatic (``Feature.auto_label`` / ``Feature.auto_label_source``).

In order: a single-type detector is named by its residue type (``auto:aa``, "Cys detector (92%
of activation on C)"): its GO hits only say which proteins are rich in that residue. Otherwise
the most specific GO term that protein length does not explain (``auto:go``), unless a Pfam /
PROSITE family is the feature's strongest association beyond length (``auto:domain``: lower
length-adjusted q than every qualifying GO term); where the feature has significant terms but
none qualifies, a label that says so (``auto:no-go``, e.g. "no GO hit beyond length"); else the
dominant Pfam family of the top proteins (``auto:pfam``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from app.residue_types import Dominance

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
class DomainHit:
    """One feature × family enrichment result (``trainer.domains``, strict protocol)."""

    accession: str  # PF00096 | PS00028
    source: str  # Pfam | PROSITE
    q_value: float
    fold_enrichment: float
    q_length: float | None


@dataclass(frozen=True)
class AutoLabel:
    text: str
    source: str  # "auto:aa" | "auto:go" | "auto:domain" | "auto:no-go" | "auto:pfam"
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
        if h.q_value < alpha and h.fold_enrichment >= min_fold and _beyond_length(h, alpha)
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


def _beyond_length(h: GoHitLike | DomainHit, alpha: float) -> bool:
    return h.q_length is None or h.q_length < alpha


def _strength(q_value: float, q_length: float | None, fold: float) -> tuple[float, float]:
    """Sort key of an association, strongest first: length-adjusted q, then fold."""
    return (q_value if q_length is None else q_length, -fold)


def domain_label(
    domains: Iterable[DomainHit],
    go_hits: Iterable[GoHitLike],
    alpha: float = 0.05,
    min_fold: float = MIN_LABEL_FOLD,
) -> AutoLabel | None:
    """The family that is the feature's strongest association surviving the length control:
    significant (q and length-adjusted q < alpha, fold >= ``min_fold``) and stronger (lower
    length-adjusted q, then higher fold) than every GO term ``go_label`` could use."""
    ok = [d for d in domains
          if d.q_value < alpha and d.fold_enrichment >= min_fold and _beyond_length(d, alpha)]  # fmt: skip
    if not ok:
        return None
    best = min(
        ok, key=lambda d: (*_strength(d.q_value, d.q_length, d.fold_enrichment), d.accession)
    )
    rivals = [h for h in go_hits
              if h.q_value < alpha and h.fold_enrichment >= min_fold and _beyond_length(h, alpha)]  # fmt: skip
    mine = _strength(best.q_value, best.q_length, best.fold_enrichment)
    if any(_strength(h.q_value, h.q_length, h.fold_enrichment) <= mine for h in rivals):
        return None
    return AutoLabel(
        text=f"{best.source} family {best.accession}",
        source="auto:domain",
        evidence=f"q={best.q_value:.2g}"
        + ("" if best.q_length is None else f", length-adjusted q={best.q_length:.2g}")
        + f", fold={best.fold_enrichment:.1f}; human proteins",
    )


def detector_label(dominance: Dominance, basis: str = "activation") -> AutoLabel | None:
    """ "Cys detector (92% of activation on C)" for a single-type detector, else None.
    ``basis``: what the shares are of ("activation", or "attribution" for protein level)."""
    if not dominance.is_detector:
        return None
    enrichment = dominance.enrichment
    return AutoLabel(
        text=f"{dominance.name} detector ({dominance.share:.0%} of {basis} on {dominance.letter})",
        source="auto:aa",
        evidence=f"{dominance.n_residues} residues; {dominance.letter} is "
        f"{dominance.background:.1%} of the corpus's residues"
        + ("" if enrichment is None else f" ({enrichment:.1f}x)"),
    )


def no_go_label(
    hits: Iterable[GoHitLike], alpha: float = 0.05, min_fold: float = MIN_LABEL_FOLD
) -> AutoLabel | None:
    """What a feature with significant GO terms but no GO label has instead: every term is
    explained by protein length, or those beyond length are enriched less than ``min_fold``.
    None when it has no significant term (nothing was withheld)."""
    significant = [h for h in hits if h.q_value < alpha]
    if not significant:
        return None
    beyond = [h for h in significant if _beyond_length(h, alpha)]
    n = len(significant)
    terms = f"{n} term{'s' if n != 1 else ''}"
    if not beyond:
        text = f"no GO hit beyond length ({terms} explained by protein length)"
    else:
        text = f"no strong GO hit ({len(beyond)} beyond length, all below {min_fold:g}-fold)"
    return AutoLabel(text=text, source="auto:no-go", evidence=f"{terms} with q < {alpha:g}")


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


def feature_label(
    hits: Iterable[GoHitLike],
    dominance: Dominance | None = None,
    top_pfams: Sequence[Iterable[str]] = (),
    alpha: float = 0.05,
    min_share: float = 0.5,
    min_fold: float = MIN_LABEL_FOLD,
    basis: str = "activation",
    domains: Iterable[DomainHit] = (),
) -> AutoLabel | None:
    """One feature's offline label, by the rules of the module docstring."""
    hits = list(hits)
    return (
        (detector_label(dominance, basis) if dominance is not None else None)
        or domain_label(domains, hits, alpha, min_fold)
        or go_label(hits, alpha, min_fold)
        or no_go_label(hits, alpha, min_fold)
        or pfam_label(top_pfams, min_share)
    )


def auto_labels(
    go_hits: Mapping[int, Iterable[GoHitLike]],
    top_pfams: Mapping[int, Sequence[Iterable[str]]],
    alpha: float = 0.05,
    min_share: float = 0.5,
    min_fold: float = MIN_LABEL_FOLD,
    dominance: Mapping[int, Dominance] | None = None,
    basis: str = "activation",
    domains: Mapping[int, Iterable[DomainHit]] | None = None,
) -> dict[int, AutoLabel]:
    """Labels per feature index (``feature_label``); ``dominance``: each feature's dominant
    residue type (``app.residue_types``), None where the run has no amino-acid profiles;
    ``domains``: each feature's family hits (strict protocol), None where the run has none."""
    dominance = dominance or {}
    domains = domains or {}
    out: dict[int, AutoLabel] = {}
    for feature in sorted(set(go_hits) | set(top_pfams) | set(dominance) | set(domains)):
        label = feature_label(go_hits.get(feature, ()), dominance.get(feature),
                              top_pfams.get(feature, ()), alpha, min_share, min_fold, basis,
                              domains.get(feature, ()))  # fmt: skip
        if label is not None:
            out[feature] = label
    return out
