"""The one query layer: HTML pages and the JSON API both call these, so they never disagree.

This module holds the list queries (runs, dictionaries, the feature list with keyset/cursor
pagination, search); ``app.detail_queries`` holds the one-object pages (feature, protein, GO term).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session, selectinload

from app.read_models import (
    FeatureFilters,
    FeatureHit,
    FeatureMap,
    FeaturePage,
    FeatureSummary,
    GoTermRef,
    ProteinRef,
    RunOut,
    SaeDetail,
    SaeSummary,
    SearchResults,
    SortKey,
    SortOrder,
)
from app.store.schema import DomainEnrichment, Explanation, Feature, GoTerm, Protein, Run, Sae


class NotFound(LookupError):
    """An id that names nothing published (routes answer 404)."""


class BadCursor(ValueError):
    """A cursor that is not a keyset position (routes answer 422)."""


def published_runs(session: Session) -> Sequence[Run]:
    """Published runs, newest first, with their dictionaries loaded."""
    stmt = (
        select(Run)
        .where(Run.status == "published")
        .options(selectinload(Run.saes))
        .order_by(Run.published_at.desc(), Run.id.desc())
    )
    return session.scalars(stmt).all()


def run_models(session: Session) -> list[RunOut]:
    return [RunOut.model_validate(run) for run in published_runs(session)]


def published_sae(session: Session, sae_id: int) -> tuple[Sae, Run]:
    """A dictionary of a published run, or ``NotFound``."""
    row = session.execute(
        select(Sae, Run)
        .join(Run, Sae.run_id == Run.id)
        .where(Sae.id == sae_id, Run.status == "published")
    ).first()
    if row is None:
        raise NotFound(f"no published SAE with id {sae_id}")
    return row[0], row[1]


def list_saes(session: Session) -> list[SaeSummary]:
    stmt = (
        select(Sae)
        .join(Run, Sae.run_id == Run.id)
        .where(Run.status == "published")
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


# A cursor is the keyset position of the last row of the previous page: its sort value ("null"
# among the features without one) and its feature id, e.g. "0.0125~412". Plain text rather than
# an opaque token, so the API schema can state exactly which cursors it accepts: every cursor
# matching the pattern names a position in any sort (the page after it may be empty).
CURSOR_PATTERN = r"^(null|-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?)~[0-9]{1,18}$"
_CURSOR = re.compile(CURSOR_PATTERN)


def encode_cursor(value: float | int | None, feature_id: int) -> str:
    """The cursor after (``value``, ``feature_id``); ``repr`` keeps a float exact on the way back
    (its exponent's "+" dropped, which a hand-written URL would turn into a space)."""
    if value is None:
        shown = "null"
    else:
        shown = repr(float(value)).replace("e+", "e") if isinstance(value, float) else str(value)
    return f"{shown}~{feature_id}"


def decode_cursor(cursor: str) -> tuple[float | None, int]:
    """The (sort value, id) a cursor points after; ``BadCursor`` if it does not match the pattern.

    A null value means the cursor is among the features without a value (they come last)."""
    if not _CURSOR.fullmatch(cursor):
        raise BadCursor(
            f"cursor {cursor[:40]!r} is not '<sort value>~<feature id>' (take next_cursor of a page)"
        )
    value, feature_id = cursor.split("~")
    return (None if value == "null" else float(value)), int(feature_id)


def _filter_clauses(sae_id: int, filters: FeatureFilters) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = [Feature.sae_id == sae_id]
    if filters.density_min is not None:
        clauses.append(Feature.density >= filters.density_min)
    if filters.density_max is not None:
        clauses.append(Feature.density <= filters.density_max)
    if filters.max_activation_min is not None:
        clauses.append(Feature.max_activation >= filters.max_activation_min)
    if filters.max_activation_max is not None:
        clauses.append(Feature.max_activation <= filters.max_activation_max)
    if filters.score_min is not None:
        clauses.append(Feature.explanation_score >= filters.score_min)
    if filters.has_go is not None:
        clauses.append(Feature.n_go_hits > 0 if filters.has_go else Feature.n_go_hits == 0)
    if filters.has_go_length is not None:
        clauses.append(
            Feature.n_go_hits_length > 0
            if filters.has_go_length
            else func.coalesce(Feature.n_go_hits_length, 0) == 0
        )
    if filters.has_domain is not None:
        clauses.append(
            Feature.n_domain_hits_length > 0
            if filters.has_domain
            else func.coalesce(Feature.n_domain_hits_length, 0) == 0
        )
    if filters.dead is not None:
        clauses.append(Feature.is_dead.is_(filters.dead))
    text = (filters.q or "").strip()
    if text:
        pattern = f"%{_escape_like(text)}%"
        # One scan of the explanations (IN), not a correlated lookup per feature.
        explained = Feature.id.in_(
            select(Explanation.feature_id).where(Explanation.text.ilike(pattern, escape="\\"))
        )
        clauses.append(or_(Feature.auto_label.ilike(pattern, escape="\\"), explained,
                           Feature.top_domain.ilike(pattern, escape="\\")))  # fmt: skip
    return clauses


def _escape_like(text: str) -> str:
    text = text.replace("\x00", "")  # PostgreSQL text cannot hold NUL
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


# Sort keys whose column can be NULL (unscored, or published before the length-adjusted test):
# those features come after the ones with a value, by id.
NULLABLE_SORTS = frozenset({"explanation_score", "n_go_hits_length"})


def list_features(
    session: Session,
    sae_id: int,
    filters: FeatureFilters,
    sort: SortKey = "index",
    order: SortOrder = "asc",
    cursor: str | None = None,
    limit: int = 50,
) -> FeaturePage:
    """One page of an SAE's features, keyset-paginated on (sort value, id) so deep pages stay fast."""
    published_sae(session, sae_id)
    clauses = _filter_clauses(sae_id, filters)
    total = session.scalar(select(func.count()).select_from(Feature).where(*clauses)) or 0
    key: ColumnElement[Any] = getattr(Feature, sort)
    after: tuple[float | None, int] | None = decode_cursor(cursor) if cursor else None
    rows: list[tuple[Feature, float | None]] = []
    # Features with a value first, in (value, id) order — a plain range scan of the
    # (sae_id, column) index; then, for a nullable column, the features without a value by id.
    if after is None or after[0] is not None:
        page = [*clauses, *([key.is_not(None)] if sort in NULLABLE_SORTS else [])]
        if after is not None:
            value, after_id = after
            newer = key > value if order == "asc" else key < value
            same = Feature.id > after_id if order == "asc" else Feature.id < after_id
            page.append(or_(newer, and_(key == value, same)))
        ordering = (
            (key.asc(), Feature.id.asc()) if order == "asc" else (key.desc(), Feature.id.desc())
        )
        stmt = select(Feature).where(*page).order_by(*ordering).limit(limit + 1)
        rows = [(f, getattr(f, sort)) for f in session.scalars(stmt)]
    if sort in NULLABLE_SORTS and len(rows) <= limit:
        tail = [*clauses, key.is_(None)]
        if after is not None and after[0] is None:
            tail.append(Feature.id > after[1] if order == "asc" else Feature.id < after[1])
        id_order = Feature.id.asc() if order == "asc" else Feature.id.desc()
        stmt = select(Feature).where(*tail).order_by(id_order).limit(limit + 1 - len(rows))
        rows += [(f, None) for f in session.scalars(stmt)]
    items = [FeatureSummary.model_validate(f) for f, _ in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last_feature, last_value = rows[limit - 1]
        next_cursor = encode_cursor(last_value, last_feature.id)
    return FeaturePage(items=items, total=total, next_cursor=next_cursor, sort=sort, order=order)


def search(session: Session, query: str, limit: int = 20) -> SearchResults:
    """Features by label/explanation text or Pfam / PROSITE accession, proteins by accession/name/gene, GO terms by id/name."""
    text = query.strip()
    if not text:
        return SearchResults(query=query, features=[], proteins=[], go_terms=[])
    pattern = f"%{_escape_like(text)}%"
    published = select(Sae.id).join(Run, Sae.run_id == Run.id).where(Run.status == "published")
    by_label = (
        select(Feature, Sae.name, Sae.is_control, Feature.auto_label)
        .join(Sae, Feature.sae_id == Sae.id)
        .where(Feature.sae_id.in_(published), Feature.auto_label.ilike(pattern, escape="\\"))
        .limit(limit)
    )
    by_text = (
        select(Feature, Sae.name, Sae.is_control, Explanation.text)
        .join(Explanation, Explanation.feature_id == Feature.id)
        .join(Sae, Feature.sae_id == Sae.id)
        .where(Feature.sae_id.in_(published), Explanation.text.ilike(pattern, escape="\\"))
        .limit(limit)
    )
    upper = text.upper()
    # A Pfam / PROSITE accession (exact or a prefix such as "PF000"): the features whose strict
    # hits include it, strongest (length-adjusted q) first. The family table has no names.
    by_family = (
        select(Feature, Sae.name, Sae.is_control,
               DomainEnrichment.source + " " + DomainEnrichment.accession)
        .join(DomainEnrichment, DomainEnrichment.feature_id == Feature.id)
        .join(Sae, Feature.sae_id == Sae.id)
        .where(Feature.sae_id.in_(published), DomainEnrichment.protocol == "strict",
               DomainEnrichment.accession.like(f"{_escape_like(upper)}%", escape="\\"))
        .order_by(func.coalesce(DomainEnrichment.q_length, DomainEnrichment.q_value))
        .limit(limit)
    )  # fmt: skip
    features: dict[int, FeatureHit] = {}
    statements = (
        (by_family, by_label, by_text) if upper[:2] in ("PF", "PS") else (by_label, by_text)
    )
    for stmt in statements:
        for feature, sae_name, is_control, snippet in session.execute(stmt):
            if feature.id not in features and len(features) < limit:
                features[feature.id] = FeatureHit(
                    feature=FeatureSummary.model_validate(feature),
                    sae_name=sae_name,
                    is_control=is_control,
                    snippet=snippet,
                )
    proteins = session.scalars(
        select(Protein)
        .where(
            or_(
                Protein.accession == upper,
                Protein.gene == upper,
                Protein.name.ilike(pattern, escape="\\"),
                Protein.accession.ilike(f"{_escape_like(upper)}%", escape="\\"),
            )
        )
        .order_by((Protein.accession == upper).desc(), Protein.accession)
        .limit(limit)
    ).all()
    go_terms = session.scalars(
        select(GoTerm)
        .where(or_(GoTerm.id == upper, GoTerm.name.ilike(pattern, escape="\\")))
        .order_by((GoTerm.id == upper).desc(), GoTerm.level, GoTerm.id)
        .limit(limit)
    ).all()
    return SearchResults(
        query=query,
        features=list(features.values()),
        proteins=[ProteinRef.model_validate(p) for p in proteins],
        go_terms=[GoTermRef.model_validate(t) for t in go_terms],
    )
