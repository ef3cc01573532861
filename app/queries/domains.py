"""Pfam / PROSITE family hits of a feature and its dictionary's controls, for the feature page,
its API and the exports (stored by ``trainer.publish`` from ``trainer.domains``)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.queries.go import length_explained
from app.queries.models import DomainControl, DomainHitOut
from app.stage_summaries import DomainsSummary
from app.store.schema import AnalysisSummary, DomainEnrichment

PROTOCOL_ORDER = {"strict": 0, "paper": 1}
STATEMENT = (
    "Pfam / PROSITE families (per human gene, 2022) tested like GO terms on the corpus's human "
    "proteins only (the only ones with family annotations): one-sided Fisher, BH over every "
    "test of the dictionary (q), the length-stratified test (length-adjusted q); the paper "
    "protocol is two-sided with Bonferroni over every family present."
)


def family_url(accession: str, source: str) -> str:
    """The family's public entry: InterPro for Pfam, PROSITE's own page for PROSITE."""
    if source == "Pfam":
        return f"https://www.ebi.ac.uk/interpro/entry/pfam/{accession}/"
    return f"https://prosite.expasy.org/{accession}"


def domain_hit(row: DomainEnrichment, alpha: float) -> DomainHitOut:
    q, ql = row.q_value, row.q_length
    return DomainHitOut(
        accession=row.accession, source=row.source, url=family_url(row.accession, row.source),
        protocol=row.protocol, study_hits=row.study_hits, study_size=row.study_size,
        pop_hits=row.pop_hits, pop_size=row.pop_size, fold_enrichment=row.fold_enrichment,
        p_value=row.p_value, q_value=q, p_bonferroni=row.p_bonferroni, q_length=ql,
        # a family hit is length-explained only where it is a hit (q < alpha) at all
        length_explained=q is not None and q < alpha and bool(length_explained(ql, alpha)),
    )  # fmt: skip


def domains_payload(session: Session, sae_id: int) -> DomainsSummary | None:
    """The dictionary's domains summary as stored (None where the run has none)."""
    return DomainsSummary.from_payload(
        session.scalar(
            select(AnalysisSummary.payload).where(
                AnalysisSummary.sae_id == sae_id, AnalysisSummary.kind == "domains"
            )
        )
    )


def feature_domain_hits(session: Session, feature_id: int, alpha: float) -> list[DomainHitOut]:
    """Both protocols' hits, strict first, each by q (paper: by p)."""
    rows = session.scalars(
        select(DomainEnrichment).where(DomainEnrichment.feature_id == feature_id)
    ).all()
    rows = sorted(rows, key=lambda r: (PROTOCOL_ORDER.get(r.protocol, 9),
                                       r.q_value if r.q_value is not None else r.p_value,
                                       r.accession))  # fmt: skip
    return [domain_hit(r, alpha) for r in rows]


def domain_control(summary: DomainsSummary | None) -> DomainControl | None:
    """The dictionary's rates (BH) beside its permutation and random-init controls."""
    if summary is None or summary.bh is None:
        return None
    perms = summary.permutation_control.permutations if summary.permutation_control else []
    rates = [p.bh.pct_features_with_hit for p in perms if p.bh is not None]
    shuffled = round(sum(rates) / len(rates), 3) if rates else None
    control = summary.random_model_control
    return DomainControl(
        statement=STATEMENT,
        population_size=max(summary.population_size.values(), default=0),
        families_tested=summary.families_tested,
        pct_features_with_hit=summary.bh.pct_features_with_hit,
        pct_features_with_hit_length_adjusted=(
            summary.length_bh.pct_features_with_hit if summary.length_bh else None
        ),
        pct_features_with_hit_shuffled=shuffled,
        pct_features_with_hit_random_init=control.pct_features_with_hit_bh if control else None,
    )
