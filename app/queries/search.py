"""Search: features by label, explanation or family accession; proteins; GO terms."""

from __future__ import annotations

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from app.queries.features import escape_like
from app.queries.models import (
    FeatureSearchHit,
    FeatureSummary,
    GoTermRef,
    ProteinRef,
    SearchResults,
)
from app.queries.scope import published_sae_ids
from app.store.schema import DomainEnrichment, Explanation, Feature, GoTerm, Protein, Sae


def search(session: Session, query: str, limit: int = 20) -> SearchResults:
    """Features by label/explanation text or Pfam / PROSITE accession, proteins by accession/name/gene, GO terms by id/name."""
    text = query.strip()
    if not text:
        return SearchResults(query=query, features=[], proteins=[], go_terms=[])
    pattern = f"%{escape_like(text)}%"
    published = published_sae_ids()
    by_label = (
        select(Feature, Sae.name, Sae.is_control, Feature.auto_label)
        .join(Sae, Feature.sae_id == Sae.id)
        .where(Feature.sae_id.in_(published), Feature.auto_label.ilike(pattern, escape="\\"))
        .limit(limit)
    )
    by_text = (
        select(Feature, Sae.name, Sae.is_control, Explanation.text)
        .join(Explanation, Explanation.feature_id == Feature.id)
        .join(Sae, Feature.sae_id == Sae.id)
        .where(Feature.sae_id.in_(published), Explanation.text.ilike(pattern, escape="\\"))
        .limit(limit)
    )
    upper = text.upper()
    # A Pfam / PROSITE accession (exact or a prefix such as "PF000"): the features whose strict
    # hits include it, strongest (length-adjusted q) first. The family table has no names.
    by_family = (
        select(Feature, Sae.name, Sae.is_control,
               DomainEnrichment.source + " " + DomainEnrichment.accession)
        .join(DomainEnrichment, DomainEnrichment.feature_id == Feature.id)
        .join(Sae, Feature.sae_id == Sae.id)
        .where(Feature.sae_id.in_(published), DomainEnrichment.protocol == "strict",
               DomainEnrichment.accession.like(f"{escape_like(upper)}%", escape="\\"))
        .order_by(func.coalesce(DomainEnrichment.q_length, DomainEnrichment.q_value))
        .limit(limit)
    )  # fmt: skip
    features: dict[int, FeatureSearchHit] = {}
    statements = (
        (by_family, by_label, by_text) if upper[:2] in ("PF", "PS") else (by_label, by_text)
    )
    for stmt in statements:
        for feature, sae_name, is_control, snippet in session.execute(stmt):
            if feature.id not in features and len(features) < limit:
                features[feature.id] = FeatureSearchHit(
                    feature=FeatureSummary.model_validate(feature),
                    sae_name=sae_name,
                    is_control=is_control,
                    snippet=snippet,
                )
    proteins = session.scalars(
        select(Protein)
        .where(
            or_(
                Protein.accession == upper,
                Protein.gene == upper,
                Protein.name.ilike(pattern, escape="\\"),
                Protein.accession.ilike(f"{escape_like(upper)}%", escape="\\"),
            )
        )
        .order_by((Protein.accession == upper).desc(), Protein.accession)
        .limit(limit)
    ).all()
    go_terms = session.scalars(
        select(GoTerm)
        .where(or_(GoTerm.id == upper, GoTerm.name.ilike(pattern, escape="\\")))
        .order_by((GoTerm.id == upper).desc(), GoTerm.level, GoTerm.id)
        .limit(limit)
    ).all()
    return SearchResults(
        query=query,
        features=list(features.values()),
        proteins=[ProteinRef.model_validate(p) for p in proteins],
        go_terms=[GoTermRef.model_validate(t) for t in go_terms],
    )
