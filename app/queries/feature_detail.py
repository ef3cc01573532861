"""The feature page: examples on their structures, GO and family hits, explanation, neighbours,
concepts, amino-acid profile and the neuron baseline (a handful of indexed selects, no N+1)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.queries.domains import domain_control, feature_domain_hits
from app.queries.errors import NotFound
from app.queries.go import (
    feature_go_hits,
    go_alpha,
    go_protocols,
    length_control,
)
from app.queries.models import (
    AaProfileOut,
    AaShare,
    BaselineContext,
    ConceptHit,
    ExplanationOut,
    ExplanationScoreOut,
    FeatureDetail,
    FeatureSummary,
    LmEffect,
    NeighborOut,
    ProteinRef,
    SaeSummary,
    TopExampleOut,
)
from app.queries.proteins import residue_values, structure_out, structures_of
from app.queries.scope import published_sae
from app.residue_types import (
    ALPHABET,
    DETECTOR_ENRICHMENT,
    DETECTOR_MIN_RESIDUES,
    DETECTOR_SHARE,
    THREE_LETTER,
)
from app.stage_summaries import AnalysisSummaryDoc, DomainsSummary, GoSummary, Number
from app.store.schema import (
    AnalysisSummary,
    Concept,
    ConceptAlignment,
    Explanation,
    ExplanationScore,
    Feature,
    FeatureNeighbor,
    Protein,
    Sae,
    Structure,
    TopExample,
)
from app.structure_coverage import best_chain

BIN_ORDER = {"top": 0, "structure": 99}  # q1..qN sort between them by name


# An example's columns and its protein's, read as plain rows: building ORM objects for the 30-odd
# examples of a page (and their chains) was the largest part of the page's cost.
_EXAMPLE_COLUMNS = (
    TopExample.bin, TopExample.rank, TopExample.activation, TopExample.max_position,
    TopExample.residue_values, TopExample.structure_id, TopExample.structure_share,
    TopExample.structure_peak_covered, Protein.id, Protein.accession, Protein.name, Protein.gene,
    Protein.organism, Protein.length, Protein.sequence,
)  # fmt: skip
_CHAIN_COLUMNS = (
    Structure.id, Structure.protein_id, Structure.format, Structure.chain, Structure.source,
    Structure.structure_type, Structure.residue_ids, Structure.sequence_positions,
    Structure.identity, Structure.coverage,
)  # fmt: skip


def _shown_structure(
    example: Any, values: list[float], chains: Sequence[Any]
) -> tuple[Any, float | None, bool | None]:
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


def _example_chains(session: Session, examples: Sequence[Any]) -> dict[int, list[Any]]:
    """The chains the examples need, by protein: the one analyze chose where it stored it (one
    row by primary key, not every chain of the protein: a well-studied protein has dozens), and
    all of a protein's chains only for examples of runs analysed before it chose."""
    stored = {ex.structure_id for ex in examples if ex.structure_id is not None}
    # A run analysed since the choice was stored gives every example that has a chain one;
    # only a run analysed before it (no example with a stored chain) needs every chain.
    undecided = set() if stored else {ex.id for ex in examples}
    chains: dict[int, list[Any]] = defaultdict(list, structures_of(session, undecided))
    if stored:
        for chain in session.execute(select(*_CHAIN_COLUMNS).where(Structure.id.in_(stored))):
            if chain.protein_id not in undecided:
                chains[chain.protein_id].append(chain)
    return chains


def _example_out(example: Any, chains: Sequence[Any]) -> TopExampleOut:
    values = residue_values(example.residue_values)
    shown, share, peak = _shown_structure(example, values, chains)
    protein = ProteinRef(id=example.id, accession=example.accession, name=example.name,
                         gene=example.gene, organism=example.organism, length=example.length)  # fmt: skip
    return TopExampleOut.model_construct(  # every field given, values already floats
        bin=example.bin, rank=example.rank, activation=example.activation,
        max_position=example.max_position, protein=protein, sequence=example.sequence,
        values=values, structure_share=share, structure_peak_covered=peak,
        structure=structure_out(shown, example.length) if shown is not None else None,
    )  # fmt: skip


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


AA_RULE = (
    f"one residue type carries at least {DETECTOR_SHARE:.0%} of the "
    f"mass, at least {DETECTOR_ENRICHMENT:g}× its share of the corpus's residues, over at least "
    f"{DETECTOR_MIN_RESIDUES} residues"
)


def analysis_payload(session: Session, sae_id: int) -> AnalysisSummaryDoc | None:
    """The dictionary's analysis summary as stored (None where the run has none)."""
    return AnalysisSummaryDoc.from_payload(
        summary_payloads(session, sae_id, ("analysis",)).get("analysis")
    )


def summary_payloads(session: Session, sae_id: int, kinds: Sequence[str]) -> dict[str, Any]:
    """The dictionary's stage summaries of these kinds, in one query (kind -> payload)."""
    rows = session.execute(
        select(AnalysisSummary.kind, AnalysisSummary.payload).where(
            AnalysisSummary.sae_id == sae_id, AnalysisSummary.kind.in_(kinds)
        )
    )
    return {kind: payload for kind, payload in rows}


def aa_profile(feature: Feature, analysis: AnalysisSummaryDoc | None) -> AaProfileOut | None:
    """The feature's amino-acid profile beside the corpus's composition (from the analysis
    summary); None where the run was published before profiles or the feature has no mass."""
    shares = feature.aa_profile
    if not shares or feature.aa_top is None or feature.aa_n_residues is None:
        return None
    info = analysis.aa_profile if analysis is not None else None
    background: list[Number | None] = [None] * len(ALPHABET)
    if info is not None and info.background is not None and len(info.background) == len(ALPHABET):
        background = list(info.background)
    types = [
        AaShare(letter=letter, name=THREE_LETTER[letter], share=float(share),
                background=None if bg is None else float(bg),
                enrichment=float(share) / bg if bg else None)
        for letter, share, bg in zip(ALPHABET, shares, background, strict=True)
    ]  # fmt: skip
    basis = info.basis if info is not None else "corpus"
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
        select(*_EXAMPLE_COLUMNS)
        .join(Protein, TopExample.protein_id == Protein.id)
        .where(TopExample.feature_id == feature_id)
    ).all()
    chains = _example_chains(session, examples)
    top = [_example_out(ex, chains.get(ex.id, [])) for ex in examples]
    top.sort(key=lambda e: (_bin_key(e.bin), e.rank))
    summaries = summary_payloads(session, sae.id, ("go", "analysis", "domains"))
    go_summary = GoSummary.from_payload(summaries.get("go"))
    alpha = go_alpha(go_summary)
    neighbors = session.execute(  # the columns shown, not each neighbour's JSON statistics
        select(
            FeatureNeighbor.cosine, Feature.id, Feature.sae_id, Feature.index, Feature.auto_label
        )
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
        go_hits=feature_go_hits(session, feature_id, "strict", alpha),
        go_hits_paper=feature_go_hits(session, feature_id, "paper", alpha),
        go_protocols=go_protocols(session, {sae.id}),
        go_control=length_control(go_summary),
        aa_profile=aa_profile(feature, AnalysisSummaryDoc.from_payload(summaries.get("analysis"))),
        domain_hits=feature_domain_hits(session, feature_id, alpha),
        domain_control=domain_control(DomainsSummary.from_payload(summaries.get("domains"))),
        top_examples=top,
        neighbors=[
            NeighborOut(feature_id=fid, sae_id=sae_id, index=index, auto_label=label, cosine=cos)
            for cos, fid, sae_id, index, label in neighbors
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


def top_examples_by_bin(examples: list[TopExampleOut]) -> dict[str, list[TopExampleOut]]:
    """Group already-sorted examples by bin, keeping the bin order."""
    grouped: dict[str, list[TopExampleOut]] = defaultdict(list)
    for example in examples:
        grouped[example.bin].append(example)
    return dict(grouped)
