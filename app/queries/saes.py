"""Runs and dictionaries: the run list, a dictionary's summary and its feature map."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.queries.errors import NotFound
from app.queries.models import FeatureMap, RunOut, SaeDetail, SaeSummary
from app.queries.scope import published, published_runs, published_sae
from app.store.schema import Feature, Run, Sae


def run_models(session: Session) -> list[RunOut]:
    return [RunOut.model_validate(run) for run in published_runs(session)]


def list_saes(session: Session) -> list[SaeSummary]:
    stmt = (
        select(Sae)
        .join(Run, Sae.run_id == Run.id)
        .where(published())
        .order_by(Sae.run_id.desc(), Sae.id)
    )
    return [SaeSummary.model_validate(s) for s in session.scalars(stmt)]


def sae_detail(session: Session, sae_id: int) -> SaeDetail:
    sae, run = published_sae(session, sae_id)
    n_features = session.scalar(select(func.count()).where(Feature.sae_id == sae_id)) or 0
    base = SaeSummary.model_validate(sae).model_dump()
    return SaeDetail(
        **base,
        run_name=run.name,
        base_model=run.base_model,
        metrics=dict(sae.metrics or {}),
        config=dict(sae.config or {}),
        n_features=n_features,
        has_map=has_feature_map(session, sae_id),
    )


MAP_METHOD = "UMAP of decoder directions (cosine metric)"


def has_feature_map(session: Session, sae_id: int) -> bool:
    """Whether any feature of the dictionary is on its map (one indexed probe)."""
    probe = select(Feature.id).where(Feature.sae_id == sae_id, Feature.map_x.is_not(None))
    return session.scalar(probe.limit(1)) is not None


def mapped_sae_ids(session: Session, sae_ids: Sequence[int]) -> set[int]:
    """Which of these dictionaries have a feature map (an indexed probe each)."""
    return {sae_id for sae_id in sae_ids if has_feature_map(session, sae_id)}


def _no_map(sae: Sae) -> NotFound:
    why = (
        "the neuron baseline has no decoder directions to map"
        if sae.kind == "neurons"
        else "its analysis made none (analyze.map.enabled = false, or analysed before feature "
        "maps existed: rerun analyze and publish)"
    )
    return NotFound(f"SAE {sae.id} ({sae.name}) has no feature map: {why}")


def feature_map_size(session: Session, sae_id: int) -> int:
    """How many features the dictionary's map shows; ``NotFound`` when it has no map."""
    sae, _ = published_sae(session, sae_id)
    count = session.scalar(
        select(func.count()).where(Feature.sae_id == sae_id, Feature.map_x.is_not(None))
    )
    if not count:
        raise _no_map(sae)
    return int(count)


def feature_map(session: Session, sae_id: int) -> FeatureMap:
    """The dictionary's mapped features; ``NotFound`` when it has none, saying why."""
    sae, _ = published_sae(session, sae_id)
    columns = (Feature.id, Feature.index, Feature.map_x, Feature.map_y, Feature.density,
               Feature.auto_label, Feature.explanation_score, Feature.n_go_hits,
               Feature.n_go_hits_length)  # fmt: skip
    rows = session.execute(
        select(*columns)
        .where(Feature.sae_id == sae_id, Feature.map_x.is_not(None), Feature.map_y.is_not(None))
        .order_by(Feature.index)
    ).all()
    if not rows:
        raise _no_map(sae)
    values = list(zip(*rows, strict=True))
    return FeatureMap(
        sae_id=sae.id, sae_name=sae.name, level=sae.level, n_latents=sae.n_latents,
        method=MAP_METHOD, feature_id=list(values[0]), index=list(values[1]),
        x=list(values[2]), y=list(values[3]), density=list(values[4]), label=list(values[5]),
        explanation_score=list(values[6]), n_go_hits=list(values[7]),
        n_go_hits_length=list(values[8]),
    )  # fmt: skip
