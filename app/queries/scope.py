"""What the app may show: runs whose status is ``published``, and their dictionaries.

Every read of published data goes through :func:`published` (or the subquery
:func:`published_sae_ids`), so "published" is decided in one place.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.orm import Session, defer, selectinload
from sqlalchemy.orm.interfaces import LoaderOption

from app.queries.errors import NotFound
from app.store.schema import Feature, Run, Sae

PUBLISHED = "published"

# A feature in a list (``FeatureSummary``) without its per-feature JSON profiles, which only its
# own page shows: decoding them for every row of a list was most of a list's cost.
FEATURE_SUMMARY: tuple[LoaderOption, ...] = (defer(Feature.aa_profile), defer(Feature.lm_effect))


def published() -> ColumnElement[bool]:
    """The condition on ``Run`` that keeps published runs only."""
    return Run.status == PUBLISHED


def published_sae_ids() -> Select[int]:
    """The ids of every dictionary of a published run, as a subquery for ``IN``."""
    return select(Sae.id).join(Run, Sae.run_id == Run.id).where(published())


def published_runs(session: Session) -> Sequence[Run]:
    """Published runs, newest first, with their dictionaries loaded."""
    stmt = (
        select(Run)
        .where(published())
        .options(selectinload(Run.saes))
        .order_by(Run.published_at.desc(), Run.id.desc())
    )
    return session.scalars(stmt).all()


def newest_published_run_id(session: Session) -> int | None:
    """The id of the newest published run; None when the store holds none."""
    return session.scalars(
        select(Run.id).where(published()).order_by(Run.published_at.desc(), Run.id.desc()).limit(1)
    ).first()


def published_run(session: Session, run_id: int) -> Run | None:
    """The run if it is published."""
    return session.scalars(select(Run).where(Run.id == run_id, published())).one_or_none()


def published_run_named(session: Session, name: str) -> Run | None:
    """The published run of that name (the trainer's report and resume checks)."""
    return session.scalar(select(Run).where(Run.name == name, published()))


def published_sae(session: Session, sae_id: int) -> tuple[Sae, Run]:
    """A dictionary of a published run, or ``NotFound``."""
    row = session.execute(
        select(Sae, Run).join(Run, Sae.run_id == Run.id).where(Sae.id == sae_id, published())
    ).first()
    if row is None:
        raise NotFound(f"no published SAE with id {sae_id}")
    return row[0], row[1]
