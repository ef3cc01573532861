"""Queries for the one-object pages: a feature, a protein, a GO term (part of the query layer).

Each is a handful of indexed selects (no N+1): the feature page with 20+ top examples, their
proteins and structures is five round trips.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from app.domain_queries import domain_control, domains_payload, feature_domain_hits
from app.queries import NotFound, published_sae
from app.read_models import (
    AaProfileOut,
    AaShare,
    BaselineContext,
    ConceptHit,
    EnrichedFeature,
    ExplanationOut,
    ExplanationScoreOut,
    FeatureDetail,
    FeatureSummary,
    GoHit,
    GoLengthControl,
    GoProtocolOut,
    GoTermDetail,
    GoTermRef,
    LmEffect,
    NeighborOut,
    ProteinDetail,
    ProteinFeatureOut,
    ProteinRef,
    ProteinSaeFeatures,
    SaeSummary,
    StructureOut,
    TopExampleOut,
)
from app.residue_types import (
    ALPHABET,
    DETECTOR_ENRICHMENT,
    DETECTOR_MIN_RESIDUES,
    DETECTOR_SHARE,
    THREE_LETTER,
)
from app.store.codec import decode_values
from app.store.schema import (
    GO_PROTOCOLS,
    AnalysisSummary,
    Concept,
    ConceptAlignment,
    Explanation,
    ExplanationScore,
    Feature,
    FeatureNeighbor,
    GoEnrichment,
    GoProtocol,
    GoTerm,
    Protein,
    ProteinFeature,
    Run,
    Sae,
    Structure,
    TopExample,
)
from app.structure_coverage import best_chain, covered_ranges, resolved_positions

BIN_ORDER = {"top": 0, "structure": 99}  # q1..qN sort between them by name
# A dictionary whose GO hit rate under length-matched shuffled annotations reaches this share
# of its real rate gets a caution on its feature pages (the full corpus's residue-level TopK
# SAE: 94.1% shuffled against 94.2% real; its protein-level one: 6.6% against 14.5%).
LENGTH_DRIVEN_SHARE = 0.5
# The GO stage's significance level when its summary names none (go.alpha's default).
DEFAULT_ALPHA = 0.05


def _values(blob: bytes | None) -> list[float]:
    return decode_values(blob).tolist()


def go_alpha(payload: Any) -> float:
    """The GO stage's alpha from its summary payload (``config.alpha``); DEFAULT_ALPHA without."""
    config = payload.get("config") if isinstance(payload, dict) else None
    alpha = config.get("alpha") if isinstance(config, dict) else None
    return DEFAULT_ALPHA if alpha is None else float(alpha)


def _go_payload(session: Session, sae_id: int) -> Any:
    return session.scalar(
        select(AnalysisSummary.payload).where(
            AnalysisSummary.sae_id == sae_id, AnalysisSummary.kind == "go"
        )
    )


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
    return {sae_id: go_alpha(payloads.get(sae_id)) for sae_id in sae_ids}


def _go_hit(hit: GoEnrichment, term: GoTerm, alpha: float) -> GoHit:
    """``alpha``: the GO stage's significance level of the hit's dictionary."""
    return GoHit(
        protocol=hit.protocol, depleted=hit.fold_enrichment < 1, go_id=hit.go_id, name=term.name, namespace=hit.namespace, level=term.level,
        depth=term.depth, study_hits=hit.study_hits, study_size=hit.study_size,
        pop_hits=hit.pop_hits, pop_size=hit.pop_size, fold_enrichment=hit.fold_enrichment,
        odds_ratio=hit.odds_ratio, p_value=hit.p_value, q_value=hit.q_value,
        p_bonferroni=hit.p_bonferroni, p_length=hit.p_length, q_length=hit.q_length,
        length_explained=None if hit.q_length is None else hit.q_length >= alpha,
        is_most_specific=hit.is_most_specific, method=hit.method,
    )  # fmt: skip


def _feature_go_hits(
    session: Session, feature_id: int, protocol: str
) -> Sequence[Row[GoEnrichment, GoTerm]]:
    """A feature's hits under one protocol, strongest first (BH q under strict, p under paper)."""
    first = GoEnrichment.q_value if protocol == "strict" else GoEnrichment.p_value
    return session.execute(
        select(GoEnrichment, GoTerm)
        .join(GoTerm, GoEnrichment.go_id == GoTerm.id)
        .where(GoEnrichment.feature_id == feature_id, GoEnrichment.protocol == protocol)
        .order_by(first, GoEnrichment.p_value, GoEnrichment.go_id)
        .limit(200)
    ).all()


def go_protocols(session: Session, sae_ids: set[int]) -> list[GoProtocolOut]:
    """The GO protocols of these dictionaries, one per (name, statement), strict first."""
    rows = session.scalars(
        select(GoProtocol).where(GoProtocol.sae_id.in_(sae_ids)).order_by(GoProtocol.id)
    ).all()
    seen: dict[tuple[str, str], GoProtocolOut] = {}
    for row in rows:
        seen.setdefault((row.name, row.statement), GoProtocolOut.model_validate(row))
    return sorted(seen.values(), key=lambda p: (GO_PROTOCOLS.index(p.name), p.statement))


def _structures_of(session: Session, protein_ids: set[int]) -> dict[int, list[Structure]]:
    """Each protein's structure chains, in id order."""
    if not protein_ids:
        return {}
    chains: dict[int, list[Structure]] = defaultdict(list)
    query = select(Structure).where(Structure.protein_id.in_(protein_ids)).order_by(Structure.id)
    for s in session.scalars(query):
        chains[s.protein_id].append(s)
    return chains


def structure_out(structure: Structure, length: int) -> StructureOut:
    """A chain with the sequence ranges it resolves of its ``length``-residue protein."""
    out = StructureOut.model_validate(structure)
    out.covered_ranges = covered_ranges(structure.sequence_positions, length)
    out.n_resolved = int(resolved_positions(structure.sequence_positions, length).size)
    return out


def _shown_structure(
    example: TopExample, values: list[float], chains: list[Structure]
) -> tuple[Structure | None, float | None, bool | None]:
    """The chain an example is shown on, its activation share and whether it resolves the peak:
    as analyze stored them, or (runs analysed before) computed here by the same rule."""
    stored = next((c for c in chains if c.id == example.structure_id), None)
    if stored is not None:
        return stored, example.structure_share, example.structure_peak_covered
    best = best_chain(values, [c.sequence_positions for c in chains], example.max_position)
    if best is None:
        return None, None, None
    index, found = best
    return chains[index], found.activation_share, found.peak_covered


def _explanation(session: Session, feature_id: int) -> ExplanationOut | None:
    explanation = session.scalars(
        select(Explanation)
        .where(Explanation.feature_id == feature_id)
        .order_by(Explanation.created_at.desc(), Explanation.id.desc())
        .limit(1)
    ).first()
    if explanation is None:
        return None
    scores = session.scalars(
        select(ExplanationScore).where(ExplanationScore.explanation_id == explanation.id)
    ).all()
    return ExplanationOut(
        id=explanation.id, text=explanation.text, model=explanation.model,
        created_at=explanation.created_at,
        scores=[ExplanationScoreOut.model_validate(s) for s in scores],
    )  # fmt: skip


def _baseline(session: Session, feature: Feature, sae: Sae) -> BaselineContext | None:
    """Rank of this feature's score among the same run's neuron features (the paper's baseline)."""
    score = feature.explanation_score
    if score is None:
        return None
    neurons = session.execute(
        select(Sae.id, Sae.name).where(Sae.run_id == sae.run_id, Sae.kind == "neurons").limit(1)
    ).first()
    if neurons is None:
        return None
    scored = Feature.sae_id == neurons.id, Feature.explanation_score.is_not(None)
    n_scored = session.scalar(select(func.count()).select_from(Feature).where(*scored)) or 0
    if n_scored == 0:
        return None
    n_better = (
        session.scalar(
            select(func.count())
            .select_from(Feature)
            .where(*scored, Feature.explanation_score > score)
        )
        or 0
    )
    return BaselineContext(
        neuron_sae_id=neurons.id, neuron_sae_name=neurons.name, n_scored=n_scored,
        n_better=n_better, percentile=(n_scored - n_better) / n_scored,
    )  # fmt: skip


def go_length_control(session: Session, sae_id: int) -> GoLengthControl | None:
    """The dictionary's GO hit rate (BH) next to its length-binned permutation control's, from
    the GO stage's summary; None when the stage or its control did not run."""
    return _length_control(_go_payload(session, sae_id))


def _length_control(payload: Any) -> GoLengthControl | None:
    if not isinstance(payload, dict):
        return None
    real = (payload.get("bh") or {}).get("pct_features_with_hit")
    control = payload.get("permutation_control") or {}
    shuffled = control.get("mean_pct_features_with_hit_bh")
    if real is None or shuffled is None or not control.get("n_permutations"):
        return None
    adjusted = (payload.get("length_bh") or {}).get("pct_features_with_hit")
    adjusted_shuffled = control.get("mean_pct_features_with_hit_length_bh")
    return GoLengthControl(
        pct_features_with_hit=float(real),
        pct_features_with_hit_shuffled=float(shuffled),
        n_permutations=int(control["n_permutations"]),
        alpha=go_alpha(payload),
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


AA_RULE = (
    f"one residue type carries at least {DETECTOR_SHARE:.0%} of the "
    f"mass, at least {DETECTOR_ENRICHMENT:g}× its share of the corpus's residues, over at least "
    f"{DETECTOR_MIN_RESIDUES} residues"
)


def analysis_payload(session: Session, sae_id: int) -> Any:
    return session.scalar(
        select(AnalysisSummary.payload).where(
            AnalysisSummary.sae_id == sae_id, AnalysisSummary.kind == "analysis"
        )
    )


def aa_profile(feature: Feature, analysis_summary: Any) -> AaProfileOut | None:
    """The feature's amino-acid profile beside the corpus's composition (from the analysis
    summary); None where the run was published before profiles or the feature has no mass."""
    shares = feature.aa_profile
    if not shares or feature.aa_top is None or feature.aa_n_residues is None:
        return None
    info = analysis_summary.get("aa_profile") if isinstance(analysis_summary, dict) else None
    info = info if isinstance(info, dict) else {}
    background = info.get("background")
    if not isinstance(background, list) or len(background) != len(ALPHABET):
        background = [None] * len(ALPHABET)
    types = [
        AaShare(letter=letter, name=THREE_LETTER[letter], share=float(share),
                background=None if bg is None else float(bg),
                enrichment=float(share) / bg if bg else None)
        for letter, share, bg in zip(ALPHABET, shares, background, strict=True)
    ]  # fmt: skip
    basis = str(info.get("basis", "corpus"))
    n = feature.aa_n_residues
    if basis == "corpus":
        meaning = (
            f"Share of this feature's activation mass on each residue type, over the {n:,} "
            "residues of the corpus it fires on."
        )
    else:
        meaning = (
            "Share of the positive part of this feature's per-residue attribution (the exact "
            "split of its pooled pre-activation over residues) on each residue type, over "
            f"{n:,} residues of its example proteins."
        )
    return AaProfileOut(
        basis=basis, meaning=meaning, n_residues=n, top=types[ALPHABET.index(feature.aa_top)],
        detector=bool(feature.aa_detector), rule=AA_RULE, types=types,
    )  # fmt: skip


def _bin_key(name: str) -> tuple[int, str]:
    return BIN_ORDER.get(name, 50), name


def feature_detail(session: Session, feature_id: int) -> FeatureDetail:
    """Everything the feature page and ``GET /features/{id}`` show."""
    feature = session.get(Feature, feature_id)
    if feature is None:
        raise NotFound(f"no feature with id {feature_id}")
    sae, run = published_sae(session, feature.sae_id)
    examples = session.execute(
        select(TopExample, Protein)
        .join(Protein, TopExample.protein_id == Protein.id)
        .where(TopExample.feature_id == feature_id)
    ).all()
    chains = _structures_of(session, {p.id for _, p in examples})
    top = []
    for ex, p in examples:
        values = _values(ex.residue_values)
        shown, share, peak = _shown_structure(ex, values, chains.get(p.id, []))
        top.append(TopExampleOut(
            bin=ex.bin, rank=ex.rank, activation=ex.activation, max_position=ex.max_position,
            protein=ProteinRef.model_validate(p), sequence=p.sequence, values=values,
            structure=structure_out(shown, p.length) if shown is not None else None,
            structure_share=share, structure_peak_covered=peak,
        ))  # fmt: skip
    top.sort(key=lambda e: (_bin_key(e.bin), e.rank))
    hits = _feature_go_hits(session, feature_id, "strict")
    hits_paper = _feature_go_hits(session, feature_id, "paper")
    go_summary = _go_payload(session, sae.id)
    alpha = go_alpha(go_summary)
    neighbors = session.execute(
        select(FeatureNeighbor.cosine, Feature)
        .join(Feature, FeatureNeighbor.neighbor_id == Feature.id)
        .where(FeatureNeighbor.feature_id == feature_id)
        .order_by(FeatureNeighbor.rank)
        .limit(20)
    ).all()
    concepts = session.execute(
        select(ConceptAlignment, Concept.name)
        .join(Concept, ConceptAlignment.concept_id == Concept.id)
        .where(ConceptAlignment.feature_id == feature_id, ConceptAlignment.split == "test")
        .order_by(ConceptAlignment.f1.desc())
        .limit(50)
    ).all()
    return FeatureDetail(
        feature=FeatureSummary.model_validate(feature),
        sae=SaeSummary.model_validate(sae),
        run_name=run.name,
        explanation=_explanation(session, feature_id),
        go_hits=[_go_hit(h, t, alpha) for h, t in hits],
        go_hits_paper=[_go_hit(h, t, alpha) for h, t in hits_paper],
        go_protocols=go_protocols(session, {sae.id}),
        go_control=_length_control(go_summary),
        aa_profile=aa_profile(feature, analysis_payload(session, sae.id)),
        domain_hits=feature_domain_hits(session, feature_id, alpha),
        domain_control=domain_control(domains_payload(session, sae.id)),
        top_examples=top,
        neighbors=[
            NeighborOut(
                feature_id=f.id, sae_id=f.sae_id, index=f.index, auto_label=f.auto_label, cosine=cos
            )
            for cos, f in neighbors
        ],
        concepts=[
            ConceptHit(
                concept=name,
                threshold=c.threshold,
                precision=c.precision,
                recall=c.recall,
                f1=c.f1,
                site_recall=c.site_recall,
                split=c.split,
            )
            for c, name in concepts
        ],
        baseline=_baseline(session, feature, sae),
        track_scale=track_scale(sae.level, feature.max_activation, top),
        lm_effect=LmEffect.from_stored(feature.lm_effect),
    )


def track_scale(level: str, max_activation: float, examples: list[TopExampleOut]) -> float:
    """Full colour on a residue track: the feature's max for residue-level dictionaries (values are
    activations); for protein-level ones the values are attributions, so their largest magnitude."""
    if level == "residue" and max_activation > 0:
        return max_activation
    peak = max((abs(v) for e in examples for v in e.values), default=0.0)
    return peak or max_activation or 1.0


def _go_refs(session: Session, ids: set[str]) -> dict[str, GoTerm]:
    if not ids:
        return {}
    return {t.id: t for t in session.scalars(select(GoTerm).where(GoTerm.id.in_(ids)))}


def protein_detail(session: Session, accession: str, per_sae: int = 10) -> ProteinDetail:
    """A protein with its GO terms, structures and, per published SAE, its most active features."""
    if "\x00" in accession:  # cannot name a stored protein (and PostgreSQL rejects NUL)
        raise NotFound(f"no protein with accession {accession!r}")
    protein = session.scalars(select(Protein).where(Protein.accession == accession)).first()
    if protein is None:
        raise NotFound(f"no protein with accession {accession!r}")
    annotated = {
        g
        for col in (protein.go_bp, protein.go_mf, protein.go_cc)
        for g in (col or "").split(";")
        if g
    }
    terms = _go_refs(session, annotated)
    go_terms = sorted(
        (GoTermRef.model_validate(t) for t in terms.values()), key=lambda t: (t.namespace, t.name)
    )
    # The chain resolving most of the protein first (the page's 3D view).
    structures = sorted(
        (
            structure_out(s, protein.length)
            for s in _structures_of(session, {protein.id})[protein.id]
        ),
        key=lambda s: -(s.n_resolved or 0),
    )
    rows = session.execute(
        select(ProteinFeature, Feature, Sae)
        .join(Feature, ProteinFeature.feature_id == Feature.id)
        .join(Sae, ProteinFeature.sae_id == Sae.id)
        .join(Run, Sae.run_id == Run.id)
        .where(ProteinFeature.protein_id == protein.id, Run.status == "published")
        .where(ProteinFeature.rank < per_sae)
        .order_by(Sae.id, ProteinFeature.rank)
    ).all()
    groups: dict[int, ProteinSaeFeatures] = {}
    for pf, feature, sae in rows:
        group = groups.setdefault(
            sae.id, ProteinSaeFeatures(sae=SaeSummary.model_validate(sae), features=[])
        )
        group.features.append(
            ProteinFeatureOut(rank=pf.rank, activation=pf.activation,
                              feature=FeatureSummary.model_validate(feature),
                              values=_values(pf.residue_values))
        )  # fmt: skip
    return ProteinDetail(
        protein=ProteinRef.model_validate(protein), sequence=protein.sequence,
        taxon_id=protein.taxon_id, pfam=protein.pfam, ec=protein.ec, source=protein.source,
        go_terms=go_terms, structures=structures,
        top_features=list(groups.values()),
    )  # fmt: skip


def structure_file(session: Session, structure_id: int) -> Structure:
    structure = session.get(Structure, structure_id)
    if structure is None:
        raise NotFound(f"no structure with id {structure_id}")
    return structure


def go_term_detail(session: Session, go_id: str, limit: int = 100) -> GoTermDetail:
    """A GO term, its ancestors (walking the stored parents level by level) and enriched features."""
    term = session.get(GoTerm, go_id)
    if term is None:
        raise NotFound(f"no GO term {go_id!r}")
    ancestors: list[GoTerm] = []
    seen = {term.id}
    frontier = set(parent_ids(term))
    while frontier:
        level = _go_refs(session, frontier - seen)
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
            .where(GoEnrichment.go_id == go_id, GoEnrichment.protocol == protocol,
                   Run.status == "published")
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
                            is_control=control, hit=_go_hit(hit, term, alphas[hit.sae_id]))
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


def top_examples_by_bin(examples: list[TopExampleOut]) -> dict[str, list[TopExampleOut]]:
    """Group already-sorted examples by bin, keeping the bin order."""
    grouped: dict[str, list[TopExampleOut]] = defaultdict(list)
    for example in examples:
        grouped[example.bin].append(example)
    return dict(grouped)
