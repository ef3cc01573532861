"""Request-scoped dependencies, all read from the app that serves the request (``app.state``,
filled by ``app.main.create_app``): its settings, a store session, the encoding service.

Tests build an app with their own ``Settings`` or replace any of these through
``app.dependency_overrides``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.settings import Settings
from app.store.engine import AppStore

if TYPE_CHECKING:  # torch loads only when a sequence is encoded, never for the other pages
    from app.encoding.service import EncodingService


def get_settings(request: Request) -> Settings:
    """The settings of the app serving this request."""
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> AppStore:
    """The store connections of the app serving this request."""
    store: AppStore = request.app.state.store
    return store


def get_session(request: Request) -> Iterator[Session]:
    """A read session on the app's store, closed after the request."""
    with get_store(request).sessions() as session:
        yield session


def get_encoding_service(request: Request) -> EncodingService:
    """The app's encoding service, made on first use (models then stay warm on ``app.state``)."""
    service = getattr(request.app.state, "encoding", None)
    if service is None:
        from app.encoding.service import EncodingService

        service = request.app.state.encoding = EncodingService(get_settings(request))
    return service


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


def is_htmx(request: Request) -> bool:
    """True when htmx asked for a fragment (it sends ``HX-Request: true``)."""
    return request.headers.get("HX-Request") == "true"


HtmxDep = Annotated[bool, Depends(is_htmx)]
