"""A protein's page (GO terms, structures, its most active features) and structure files."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.queries.errors import NotFound
from app.queries.go import go_refs
from app.queries.models import (
    FeatureSummary,
    GoTermRef,
    ProteinDetail,
    ProteinFeatureOut,
    ProteinRef,
    ProteinSaeFeatures,
    SaeSummary,
    StructureOut,
)
from app.queries.scope import published
from app.store.codec import decode_values
from app.store.schema import Feature, Protein, ProteinFeature, Run, Sae, Structure
from app.structure_coverage import ranges_of, resolved_positions


def residue_values(blob: bytes | None) -> list[float]:
    return decode_values(blob).tolist()


def structures_of(session: Session, protein_ids: set[int]) -> dict[int, list[Structure]]:
    """Each protein's structure chains, in id order."""
    if not protein_ids:
        return {}
    chains: dict[int, list[Structure]] = defaultdict(list)
    query = select(Structure).where(Structure.protein_id.in_(protein_ids)).order_by(Structure.id)
    for s in session.scalars(query):
        chains[s.protein_id].append(s)
    return chains


def structure_out(structure: Structure, length: int) -> StructureOut:
    """A chain with the sequence ranges it resolves of its ``length``-residue protein. Built
    without validation: the columns are typed by the schema, and validating a chain's residue
    lists again was a tenth of the heaviest feature page's query time."""
    resolved = resolved_positions(structure.sequence_positions, length)
    stored = {name: getattr(structure, name) for name in _STRUCTURE_COLUMNS}
    return StructureOut.model_construct(
        **stored, covered_ranges=ranges_of(resolved), n_resolved=int(resolved.size)
    )


_STRUCTURE_COLUMNS = tuple(
    name for name in StructureOut.model_fields if name not in ("covered_ranges", "n_resolved")
)


def protein_sequence(session: Session, accession: str) -> str:
    """A stored protein's sequence (links name the protein, not its sequence)."""
    sequence = None
    if "\x00" not in accession:  # cannot name a stored protein (and PostgreSQL rejects NUL)
        sequence = session.scalar(select(Protein.sequence).where(Protein.accession == accession))
    if sequence is None:
        raise NotFound(f"no protein with accession {accession!r}")
    return sequence


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
    terms = go_refs(session, annotated)
    go_terms = sorted(
        (GoTermRef.model_validate(t) for t in terms.values()), key=lambda t: (t.namespace, t.name)
    )
    # The chain resolving most of the protein first (the page's 3D view).
    structures = sorted(
        (
            structure_out(s, protein.length)
            for s in structures_of(session, {protein.id})[protein.id]
        ),
        key=lambda s: -(s.n_resolved or 0),
    )
    rows = session.execute(
        select(ProteinFeature, Feature, Sae)
        .join(Feature, ProteinFeature.feature_id == Feature.id)
        .join(Sae, ProteinFeature.sae_id == Sae.id)
        .join(Run, Sae.run_id == Run.id)
        .where(ProteinFeature.protein_id == protein.id, published())
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
                              values=residue_values(pf.residue_values))
        )  # fmt: skip
    return ProteinDetail(
        protein=ProteinRef.model_validate(protein), sequence=protein.sequence,
        taxon_id=protein.taxon_id, pfam=protein.pfam, ec=protein.ec, source=protein.source,
        go_terms=go_terms, structures=structures,
        top_features=list(groups.values()),
    )  # fmt: skip


def stored_structure(session: Session, structure_id: int) -> Structure | None:
    """A stored structure chain by id (its file is served as is)."""
    return session.get(Structure, structure_id)
