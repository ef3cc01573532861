"""Store look-ups around an encoding: feature labels/explanations, and a stored protein match."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from app.store.schema import Explanation, Feature, Protein, Run, Sae


@dataclass(frozen=True)
class FeatureInfo:
    feature_id: int
    label: str | None
    explanation: str | None
    explanation_score: float | None
    is_dead: bool


def feature_info(session: Session, sae_id: int, indices: list[int]) -> dict[int, FeatureInfo]:
    """Label and latest explanation of the given latents of one SAE, by latent index."""
    if not indices:
        return {}
    rows = session.execute(
        select(Feature.id, Feature.index, Feature.auto_label, Feature.explanation_score,
               Feature.is_dead)
        .where(Feature.sae_id == sae_id, Feature.index.in_(indices))
    ).all()  # fmt: skip
    texts: dict[int, str] = {}
    ids = [r[0] for r in rows]
    if ids:
        for fid, text in session.execute(
            select(Explanation.feature_id, Explanation.text)
            .where(Explanation.feature_id.in_(ids))
            .order_by(Explanation.created_at, Explanation.id)
        ):
            texts[fid] = text  # the newest wins
    out: dict[int, FeatureInfo] = {}
    for fid, index, label, score, dead in rows:
        out[int(index)] = FeatureInfo(fid, label, texts.get(fid), score, dead)
    return out


@dataclass(frozen=True)
class StructureRef:
    structure_id: int
    chain: str
    format: str
    url: str
    residue_ids: list[str]
    sequence_positions: list[int]


@dataclass(frozen=True)
class ProteinMatch:
    protein_id: int
    accession: str
    name: str | None
    structures: list[StructureRef] = field(default_factory=list)


def match_protein(session: Session, sequence: str) -> ProteinMatch | None:
    """A stored protein with exactly this sequence (and its structures), if any."""
    protein = session.scalars(
        select(Protein)
        .where(Protein.length == len(sequence), Protein.sequence == sequence)
        .options(selectinload(Protein.structures))
        .limit(1)
    ).first()
    if protein is None:
        return None
    refs = [
        StructureRef(s.id, s.chain, s.format, f"/encode/structure/{s.id}",
                     [str(r) for r in s.residue_ids], [int(p) for p in s.sequence_positions])
        for s in sorted(protein.structures, key=lambda s: -(s.coverage or 0.0))
    ]  # fmt: skip
    return ProteinMatch(protein.id, protein.accession, protein.name, refs)


def published_saes(session: Session) -> list[dict[str, Any]]:
    """Every dictionary of every published run, for the page's select box."""
    rows = session.execute(
        select(Sae.id, Sae.name, Sae.kind, Sae.level, Sae.layer, Run.name.label("run"))
        .join(Run, Sae.run_id == Run.id)
        .where(Run.status == "published")
        .order_by(Run.id.desc(), Sae.id)
    ).all()
    return [dict(r._mapping) for r in rows]
