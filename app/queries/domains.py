"""Pfam / PROSITE family hits of a feature and its dictionary's controls, for the feature page,
its API and the exports (stored by ``trainer.publish`` from ``trainer.domains``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.queries.go import length_explained
from app.queries.models import DomainControl, DomainHitOut
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


def domains_payload(session: Session, sae_id: int) -> dict[str, Any] | None:
    row = session.scalar(
        select(AnalysisSummary).where(
            AnalysisSummary.sae_id == sae_id, AnalysisSummary.kind == "domains"
        )
    )
    return None if row is None else dict(row.payload)


def feature_domain_hits(session: Session, feature_id: int, alpha: float) -> list[DomainHitOut]:
    """Both protocols' hits, strict first, each by q (paper: by p)."""
    rows = session.scalars(
        select(DomainEnrichment).where(DomainEnrichment.feature_id == feature_id)
    ).all()
    rows = sorted(rows, key=lambda r: (PROTOCOL_ORDER.get(r.protocol, 9),
                                       r.q_value if r.q_value is not None else r.p_value,
                                       r.accession))  # fmt: skip
    return [domain_hit(r, alpha) for r in rows]


def domain_control(payload: dict[str, Any] | None) -> DomainControl | None:
    """The dictionary's rates (BH) beside its permutation and random-init controls."""
    if not payload or "bh" not in payload:
        return None
    perms = payload.get("permutation_control", {}).get("permutations", [])
    shuffled = (
        round(sum(p["bh"]["pct_features_with_hit"] for p in perms) / len(perms), 3)
        if perms
        else None
    )
    random_init = payload.get("random_model_control", {}).get("pct_features_with_hit_bh")
    return DomainControl(
        statement=STATEMENT,
        population_size=max(payload.get("population_size", {}).values(), default=0),
        families_tested=payload.get("families_tested", {}),
        pct_features_with_hit=payload["bh"]["pct_features_with_hit"],
        pct_features_with_hit_length_adjusted=payload.get("length_bh", {}).get(
            "pct_features_with_hit"
        ),
        pct_features_with_hit_shuffled=shuffled,
        pct_features_with_hit_random_init=random_init,
    )
