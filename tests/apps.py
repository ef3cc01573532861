"""The web app on a given store, with its own settings: no environment, no process-wide cache."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings


def app_for(url: str, **settings: Any) -> FastAPI:
    """An app serving the store at ``url``; keyword arguments set other ``Settings`` fields."""
    return create_app(Settings(database_url=url, **settings))
