"""Request-scoped dependencies: a store session and the template renderer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.settings import get_settings
from app.store.engine import engine_for, session_factory


def get_session() -> Iterator[Session]:
    """A read session on the configured store, closed after the request."""
    engine = engine_for(get_settings().sqlalchemy_url)
    with session_factory(engine)() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def is_htmx(request: Request) -> bool:
    """True when htmx asked for a fragment (it sends ``HX-Request: true``)."""
    return request.headers.get("HX-Request") == "true"


HtmxDep = Annotated[bool, Depends(is_htmx)]
