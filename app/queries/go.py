"""GO: each dictionary's GO alpha and length control, a feature's GO hits, a GO term's page."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.queries.errors import NotFound
from app.queries.models import (
    EnrichedFeature,
    FeatureSummary,
    GoHit,
    GoLengthControl,
    GoProtocolOut,
    GoTermDetail,
    GoTermRef,
)
from app.queries.scope import FEATURE_SUMMARY, published
from app.stage_summaries import GoSummary
from app.store.schema import (
    GO_PROTOCOLS,
    AnalysisSummary,
    Feature,
    GoEnrichment,
    GoProtocol,
    GoTerm,
    Run,
    Sae,
)

# A dictionary whose GO hit rate under length-matched shuffled annotations reaches this share
# of its real rate gets a caution on its feature pages (the full corpus's residue-level TopK
# SAE: 94.1% shuffled against 94.2% real; its protein-level one: 6.6% against 14.5%).
LENGTH_DRIVEN_SHARE = 0.5
# The GO stage's significance level when its summary names none (go.alpha's default).
DEFAULT_ALPHA = 0.05


def length_explained(q_length: float | None, alpha: float) -> bool | None:
    """Whether protein length alone explains a hit: its length-stratified q is not below the
    dictionary's alpha; None for hits published before the length-stratified test."""
    return None if q_length is None else q_length >= alpha


def go_alpha(summary: GoSummary | None) -> float:
    """The GO stage's alpha from its summary (``config.alpha``); DEFAULT_ALPHA without one."""
    return (
        DEFAULT_ALPHA if summary is None or summary.config is None else float(summary.config.alpha)
    )


def go_summary(session: Session, sae_id: int) -> GoSummary | None:
    """The dictionary's GO stage summary as published; None where the stage did not run."""
    return GoSummary.from_payload(session.scalar(
        select(AnalysisSummary.payload).where(
            AnalysisSummary.sae_id == sae_id, AnalysisSummary.kind == "go"
        )
    ))  # fmt: skip


def go_alphas(session: Session, sae_ids: Collection[int]) -> dict[int, float]:
    """Each dictionary's GO alpha, in one query (DEFAULT_ALPHA where its summary names none)."""
    if not sae_ids:
        return {}
    payloads = {
        sae_id: payload
        for sae_id, payload in session.execute(
            select(AnalysisSummary.sae_id, AnalysisSummary.payload).where(
                AnalysisSummary.sae_id.in_(set(sae_ids)), AnalysisSummary.kind == "go"
            )
        )
    }
    return {sae_id: go_alpha(GoSummary.from_payload(payloads.get(sae_id))) for sae_id in sae_ids}


def go_hit(hit: Any, term: Any, alpha: float) -> GoHit:
    """``alpha``: the GO stage's significance level of the hit's dictionary; ``hit`` and
    ``term`` as stored (or one row holding the columns of both)."""
    return GoHit(
        protocol=hit.protocol, depleted=hit.fold_enrichment < 1, go_id=hit.go_id, name=term.name, namespace=hit.namespace, level=term.level,
        depth=term.depth, study_hits=hit.study_hits, study_size=hit.study_size,
        pop_hits=hit.pop_hits, pop_size=hit.pop_size, fold_enrichment=hit.fold_enrichment,
        odds_ratio=hit.odds_ratio, p_value=hit.p_value, q_value=hit.q_value,
        p_bonferroni=hit.p_bonferroni, p_length=hit.p_length, q_length=hit.q_length,
        length_explained=length_explained(hit.q_length, alpha),
        is_most_specific=hit.is_most_specific, method=hit.method,
    )  # fmt: skip


# A hit as the feature page shows it, one plain row: the hit's columns and its term's name,
# level and depth (a row per hit rather than two ORM objects, the page's largest query).
_HIT_COLUMNS = (
    GoEnrichment.protocol, GoEnrichment.go_id, GoEnrichment.namespace, GoEnrichment.study_hits,
    GoEnrichment.study_size, GoEnrichment.pop_hits, GoEnrichment.pop_size,
    GoEnrichment.fold_enrichment, GoEnrichment.odds_ratio, GoEnrichment.p_value,
    GoEnrichment.q_value, GoEnrichment.p_bonferroni, GoEnrichment.p_length,
    GoEnrichment.q_length, GoEnrichment.is_most_specific, GoEnrichment.method, GoTerm.name,
    GoTerm.level, GoTerm.depth,
)  # fmt: skip


def feature_go_hits(session: Session, feature_id: int, protocol: str, alpha: float) -> list[GoHit]:
    """A feature's hits under one protocol, strongest first (BH q under strict, p under paper);
    ``alpha``: its dictionary's GO significance level."""
    first = GoEnrichment.q_value if protocol == "strict" else GoEnrichment.p_value
    rows = session.execute(
        select(*_HIT_COLUMNS)
        .join(GoTerm, GoEnrichment.go_id == GoTerm.id)
        .where(GoEnrichment.feature_id == feature_id, GoEnrichment.protocol == protocol)
        .order_by(first, GoEnrichment.p_value, GoEnrichment.go_id)
        .limit(200)
    ).all()
    return [go_hit(row, row, alpha) for row in rows]  # the row holds the term's columns too


def go_protocols(session: Session, sae_ids: set[int]) -> list[GoProtocolOut]:
    """The GO protocols of these dictionaries, one per (name, statement), strict first."""
    rows = session.scalars(
        select(GoProtocol).where(GoProtocol.sae_id.in_(sae_ids)).order_by(GoProtocol.id)
    ).all()
    seen: dict[tuple[str, str], GoProtocolOut] = {}
    for row in rows:
        seen.setdefault((row.name, row.statement), GoProtocolOut.model_validate(row))
    return sorted(seen.values(), key=lambda p: (GO_PROTOCOLS.index(p.name), p.statement))


def go_length_control(session: Session, sae_id: int) -> GoLengthControl | None:
    """The dictionary's GO hit rate (BH) next to its length-binned permutation control's, from
    the GO stage's summary; None when the stage or its control did not run."""
    return length_control(go_summary(session, sae_id))


def length_control(summary: GoSummary | None) -> GoLengthControl | None:
    control = None if summary is None else summary.permutation_control
    if summary is None or control is None:
        return None
    real = summary.bh.pct_features_with_hit
    shuffled = control.mean_pct_features_with_hit_bh
    if shuffled is None or not control.n_permutations:
        return None
    adjusted = None if summary.length_bh is None else summary.length_bh.pct_features_with_hit
    adjusted_shuffled = control.mean_pct_features_with_hit_length_bh
    return GoLengthControl(
        pct_features_with_hit=float(real),
        pct_features_with_hit_shuffled=float(shuffled),
        n_permutations=int(control.n_permutations),
        alpha=go_alpha(summary),
        pct_features_with_hit_length_adjusted=None if adjusted is None else float(adjusted),
        pct_features_with_hit_length_adjusted_shuffled=(
            None if adjusted_shuffled is None else float(adjusted_shuffled)
        ),
        length_driven=length_driven(float(real), float(shuffled)),
    )


def length_driven(pct_real: float, pct_shuffled: float) -> bool:
    """True when shuffling annotations within length bins keeps at least LENGTH_DRIVEN_SHARE of
    the dictionary's GO hit rate."""
    return pct_real > 0 and pct_shuffled >= LENGTH_DRIVEN_SHARE * pct_real


def go_refs(session: Session, ids: set[str]) -> dict[str, GoTerm]:
    if not ids:
        return {}
    return {t.id: t for t in session.scalars(select(GoTerm).where(GoTerm.id.in_(ids)))}


def go_term_detail(session: Session, go_id: str, limit: int = 100) -> GoTermDetail:
    """A GO term, its ancestors (walking the stored parents level by level) and enriched features."""
    term = session.get(GoTerm, go_id)
    if term is None:
        raise NotFound(f"no GO term {go_id!r}")
    ancestors: list[GoTerm] = []
    seen = {term.id}
    frontier = set(parent_ids(term))
    while frontier:
        level = go_refs(session, frontier - seen)
        seen |= frontier
        ancestors.extend(sorted(level.values(), key=lambda t: t.id))
        frontier = {p for t in level.values() for p in parent_ids(t) if p not in seen}
    rows = [
        row
        for protocol, first in (("strict", GoEnrichment.q_value), ("paper", GoEnrichment.p_value))
        for row in session.execute(
            select(GoEnrichment, Feature, Sae.name, Sae.is_control)
            .join(Feature, GoEnrichment.feature_id == Feature.id)
            .join(Sae, GoEnrichment.sae_id == Sae.id)
            .join(Run, Sae.run_id == Run.id)
            .options(*FEATURE_SUMMARY)
            .where(GoEnrichment.go_id == go_id, GoEnrichment.protocol == protocol,
                   published())
            .order_by(first, GoEnrichment.p_value, GoEnrichment.id)
            .limit(limit)
        ).all()
    ]  # fmt: skip
    alphas = go_alphas(session, {hit.sae_id for hit, *_ in rows})
    return GoTermDetail(
        term=GoTermRef.model_validate(term), definition=term.definition,
        is_obsolete=term.is_obsolete, parents=parent_ids(term),
        ancestors=[GoTermRef.model_validate(t) for t in ancestors],
        enriched_features=[
            EnrichedFeature(feature=FeatureSummary.model_validate(f), sae_name=name,
                            is_control=control, hit=go_hit(hit, term, alphas[hit.sae_id]))
            for hit, f, name, control in rows
        ],
        protocols=go_protocols(session, {hit.sae_id for hit, *_ in rows}),
    )  # fmt: skip


def parent_ids(term: GoTerm) -> list[str]:
    """Direct parents as ids (stored as ids, or as {"id": ..., "relation": ...} objects)."""
    out = []
    for parent in term.parents or []:
        pid = parent.get("id") if isinstance(parent, dict) else parent
        if isinstance(pid, str):
            out.append(pid)
    return out
