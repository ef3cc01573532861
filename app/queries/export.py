"""Every feature of one dictionary with its explanation, GO and family hits (the bulk export)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.queries.domains import domain_hit
from app.queries.feature_detail import analysis_payload
from app.queries.go import go_alphas, go_protocols, length_explained
from app.queries.models import DomainHitOut, FeatureExport, GoHitOut, LmEffect, SaeExport
from app.queries.scope import published
from app.residue_types import ALPHABET
from app.store.schema import DomainEnrichment, Explanation, Feature, GoEnrichment, GoTerm, Run, Sae


def exportable_sae(session: Session, sae_id: int) -> Sae | None:
    """The dictionary if its run is published (with its run loaded through ``sae.run``)."""
    return session.scalar(
        select(Sae).join(Run, Sae.run_id == Run.id).where(Sae.id == sae_id, published())
    )


def export_features(session: Session, sae: Sae) -> SaeExport:
    """Every feature of ``sae`` with its newest explanation and its GO hits (by q-value)."""
    explanations: dict[int, tuple[str | None, str | None]] = {}
    for fid, text, model in session.execute(
        select(Explanation.feature_id, Explanation.text, Explanation.model)
        .join(Feature, Feature.id == Explanation.feature_id)
        .where(Feature.sae_id == sae.id)
        .order_by(Explanation.created_at, Explanation.id)
    ):
        explanations[fid] = (text, model)
    alpha = go_alphas(session, [sae.id])[sae.id]
    hits: dict[tuple[str, int], list[GoHitOut]] = {}
    for hit, name in session.execute(
        select(GoEnrichment, GoTerm.name)
        .join(GoTerm, GoTerm.id == GoEnrichment.go_id)
        .where(GoEnrichment.sae_id == sae.id)
        .order_by(GoEnrichment.feature_id, GoEnrichment.q_value, GoEnrichment.p_value)
    ):
        hits.setdefault((hit.protocol, hit.feature_id), []).append(GoHitOut(
            protocol=hit.protocol, go_id=hit.go_id, name=name, namespace=hit.namespace,
            p_value=hit.p_value, q_value=hit.q_value, p_bonferroni=hit.p_bonferroni,
            depleted=hit.fold_enrichment < 1, q_length=hit.q_length,
            length_explained=length_explained(hit.q_length, alpha),
            fold_enrichment=hit.fold_enrichment,
            study_hits=hit.study_hits, study_size=hit.study_size,
        ))  # fmt: skip
    domain_hits: dict[int, list[DomainHitOut]] = {}
    for row in session.scalars(
        select(DomainEnrichment).where(DomainEnrichment.sae_id == sae.id)
        .order_by(DomainEnrichment.feature_id, DomainEnrichment.protocol.desc(),
                  DomainEnrichment.q_value, DomainEnrichment.p_value)
    ):  # fmt: skip
        domain_hits.setdefault(row.feature_id, []).append(domain_hit(row, alpha))
    features = []
    for f in session.scalars(
        select(Feature).where(Feature.sae_id == sae.id).order_by(Feature.index)
    ):
        expl_text, expl_model = explanations.get(f.id, (None, None))
        features.append(FeatureExport(
            index=f.index, feature_id=f.id, label=f.auto_label, label_source=f.auto_label_source,
            explanation=expl_text, explanation_model=expl_model, explanation_score=f.explanation_score,
            density=f.density, n_active=f.n_active, max_activation=f.max_activation,
            mean_activation=f.mean_activation, is_dead=f.is_dead, pattern_class=f.pattern_class,
            n_go_hits_length=f.n_go_hits_length, go_hits=hits.get(("strict", f.id), []),
            n_go_hits_paper=f.n_go_hits_paper, go_hits_paper=hits.get(("paper", f.id), []),
            aa_top=f.aa_top, aa_top_share=f.aa_top_share, aa_detector=f.aa_detector,
            aa_n_residues=f.aa_n_residues,
            aa_profile=None if not f.aa_profile else dict(zip(ALPHABET, f.aa_profile, strict=True)),
            lm_effect=LmEffect.from_stored(f.lm_effect), top_domain=f.top_domain,
            top_domain_source=f.top_domain_source, n_domain_hits=f.n_domain_hits,
            n_domain_hits_length=f.n_domain_hits_length, domain_hits=domain_hits.get(f.id, []),
        ))  # fmt: skip
    run: Run = sae.run
    return SaeExport(
        sae_id=sae.id, sae_name=sae.name, kind=sae.kind, level=sae.level, layer=sae.layer,
        n_latents=sae.n_latents, run_name=run.name, base_model=run.base_model,
        checkpoint_sha256=run.checkpoint_sha256, go_alpha=alpha,
        go_protocols=go_protocols(session, {sae.id}), is_control=sae.is_control,
        aa_profile_basis=_aa_basis(session, sae), features=features,
    )  # fmt: skip


def _aa_basis(session: Session, sae: Sae) -> str | None:
    """The analysis summary's profile basis; None where the run has no profiles."""
    analysis = analysis_payload(session, sae.id)
    info = analysis.aa_profile if analysis is not None else None
    return info.basis if info is not None and "basis" in info.model_fields_set else None
