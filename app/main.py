"""The ASGI application: ``app.main:app`` (settings from the environment), or
``create_app(settings)`` for an app of one's own (tests, benchmarks).

Everything a request needs hangs off its app (``app.state``): the settings, the store's engines
(disposed at shutdown), the encoding service once used. Nothing is cached per process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from starlette.middleware.gzip import GZipMiddleware

from app import templating
from app.deps import get_store
from app.errors import install_error_handlers
from app.http_cache import (
    MIN_COMPRESS_BYTES,
    ON_THE_FLY_GZIP_LEVEL,
    PublishedResponses,
    store_publication,
)
from app.routes import api, encode, export, findings, intervene, pages, worklist
from app.settings import PROJECT_ROOT, Settings
from app.store.engine import AppStore


@asynccontextmanager
async def lifespan(application: FastAPI) -> AsyncIterator[None]:
    """At start: bound the threads that run this worker's synchronous routes. At shutdown: stop
    the encoding queue if it ran, close the store's connections."""
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = application.state.settings.request_threads
    yield
    service = getattr(application.state, "encoding", None)
    if service is not None:
        await service.batcher.close()
        application.state.encoding = None
    application.state.store.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app serving ``settings`` (default: read from the environment and ``.env``)."""
    settings = settings or Settings()
    application = FastAPI(
        title="ProtSAE Explorer",
        version="1",
        description="Sparse-autoencoder features of ESM2 protein language models.",
        lifespan=lifespan,
    )
    store = AppStore(settings.sqlalchemy_url)
    application.state.settings = settings
    application.state.store = store
    templating.configure(templating.templates)
    install_error_handlers(application)
    # Innermost first: published responses are cached compressed; GZip compresses what they
    # leave (errors, static files, structures, exports) and passes already-encoded bodies.
    application.add_middleware(
        PublishedResponses,
        enabled=settings.cache,
        max_bytes=int(settings.cache_max_mb * (1 << 20)),
        max_age=settings.cache_max_age,
        publication=lambda: store_publication(store.publication_engine),
    )
    application.add_middleware(
        GZipMiddleware, minimum_size=MIN_COMPRESS_BYTES, compresslevel=ON_THE_FLY_GZIP_LEVEL
    )
    application.mount("/static", StaticFiles(directory=PROJECT_ROOT / "static"), name="static")
    application.include_router(pages.router)
    application.include_router(findings.router)
    application.include_router(api.router)
    application.include_router(worklist.router)
    application.include_router(encode.router)
    application.include_router(intervene.router)
    application.include_router(export.router)

    @application.get("/healthz", tags=["ops"], summary="Liveness and store reachability")
    def healthz(app_store: Annotated[AppStore, Depends(get_store)]) -> dict[str, str]:
        engine = app_store.engine
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok", "database": engine.dialect.name}

    @application.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        """The site icon where browsers look for it first (``static/favicon.svg`` is its source)."""
        return FileResponse(
            PROJECT_ROOT / "static" / "favicon.ico",
            media_type="image/x-icon",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    return application


app = create_app()
