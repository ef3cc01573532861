"""Store reads around an encoding: the dictionary to load, feature labels and explanations, a
stored protein with the same sequence, and the page's dictionary choices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from app.queries.models import MatchOut, StructureRef
from app.queries.scope import published
from app.store.schema import Explanation, Feature, Protein, Run, Sae


@dataclass(frozen=True)
class FeatureInfo:
    feature_id: int
    label: str | None
    explanation: str | None
    explanation_score: float | None
    is_dead: bool


def encoding_dictionary(
    session: Session, sae_id: int
) -> tuple[Sae, Run, npt.NDArray[np.float32]] | None:
    """A published dictionary, its run and each latent's density (by index); None if unknown."""
    row = session.execute(
        select(Sae, Run).join(Run, Sae.run_id == Run.id).where(Sae.id == sae_id, published())
    ).first()
    if row is None:
        return None
    sae, run = row[0], row[1]
    density = np.zeros(sae.n_latents, dtype=np.float32)
    for index, value in session.execute(
        select(Feature.index, Feature.density).where(Feature.sae_id == sae_id)
    ):
        density[index] = value
    return sae, run, density


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


def match_protein(session: Session, sequence: str) -> MatchOut | None:
    """A stored protein with exactly this sequence (and its structures, best covered first)."""
    protein = session.scalars(
        select(Protein)
        .where(Protein.length == len(sequence), Protein.sequence == sequence)
        .options(selectinload(Protein.structures))
        .limit(1)
    ).first()
    if protein is None:
        return None
    refs = [
        StructureRef(structure_id=s.id, chain=s.chain, format=s.format,
                     url=f"/encode/structure/{s.id}", residue_ids=[str(r) for r in s.residue_ids],
                     sequence_positions=[int(p) for p in s.sequence_positions])
        for s in sorted(protein.structures, key=lambda s: -(s.coverage or 0.0))
    ]  # fmt: skip
    return MatchOut(
        protein_id=protein.id, accession=protein.accession, name=protein.name, structures=refs
    )


def published_sae_choices(session: Session) -> list[dict[str, Any]]:
    """Every dictionary of every published run, for the page's select box."""
    rows = session.execute(
        select(Sae.id, Sae.name, Sae.kind, Sae.level, Sae.layer, Run.name.label("run"))
        .join(Run, Sae.run_id == Run.id)
        .where(published())
        .order_by(Run.id.desc(), Sae.id)
    ).all()
    return [dict(r._mapping) for r in rows]
