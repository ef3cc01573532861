"""A dictionary's feature list: filters, sort and keyset (cursor) pagination."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from app.queries.errors import BadCursor
from app.queries.models import FeatureFilters, FeaturePage, FeatureSummary, SortKey, SortOrder
from app.queries.scope import FEATURE_SUMMARY, published_sae
from app.store.schema import Explanation, Feature

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
        pattern = f"%{escape_like(text)}%"
        # One scan of the explanations (IN), not a correlated lookup per feature.
        explained = Feature.id.in_(
            select(Explanation.feature_id).where(Explanation.text.ilike(pattern, escape="\\"))
        )
        clauses.append(or_(Feature.auto_label.ilike(pattern, escape="\\"), explained,
                           Feature.top_domain.ilike(pattern, escape="\\")))  # fmt: skip
    return clauses


def escape_like(text: str) -> str:
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
        stmt = (
            select(Feature)
            .options(*FEATURE_SUMMARY)
            .where(*page)
            .order_by(*ordering)
            .limit(limit + 1)
        )
        rows = [(f, getattr(f, sort)) for f in session.scalars(stmt)]
    if sort in NULLABLE_SORTS and len(rows) <= limit:
        tail = [*clauses, key.is_(None)]
        if after is not None and after[0] is None:
            tail.append(Feature.id > after[1] if order == "asc" else Feature.id < after[1])
        id_order = Feature.id.asc() if order == "asc" else Feature.id.desc()
        stmt = (
            select(Feature)
            .options(*FEATURE_SUMMARY)
            .where(*tail)
            .order_by(id_order)
            .limit(limit + 1 - len(rows))
        )
        rows += [(f, None) for f in session.scalars(stmt)]
    items = [FeatureSummary.model_validate(f) for f, _ in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last_feature, last_value = rows[limit - 1]
        next_cursor = encode_cursor(last_value, last_feature.id)
    return FeaturePage(items=items, total=total, next_cursor=next_cursor, sort=sort, order=order)
