"""The one query layer: HTML pages and the JSON API both call these, so they never disagree."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from app.store.schema import Run


def published_runs(session: Session) -> Sequence[Run]:
    """Published runs, newest first, with their dictionaries loaded."""
    stmt = (
        select(Run)
        .where(Run.status == "published")
        .options(selectinload(Run.saes))
        .order_by(Run.published_at.desc(), Run.id.desc())
    )
    return session.scalars(stmt).all()
