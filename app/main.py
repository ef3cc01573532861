"""The ASGI application: ``app.main:app``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.gzip import GZipMiddleware

from app.http_cache import GZIP_LEVEL, MIN_COMPRESS_BYTES, PublishedResponses
from app.routes import api, encode, export, findings, pages
from app.settings import PROJECT_ROOT, get_settings
from app.store.engine import engine_for


def error_body(status: int, message: str, detail: object = None) -> dict[str, object]:
    """The one JSON error shape of the API."""
    return {"error": {"status": status, "message": message, "detail": detail}}


def create_app() -> FastAPI:
    application = FastAPI(
        title="ProtSAE Explorer",
        version="1",
        description="Sparse-autoencoder features of ESM2 protein language models.",
    )
    settings = get_settings()
    # Innermost first: published responses are cached compressed; GZip compresses what they
    # leave (errors, static files, structures, exports) and passes already-encoded bodies.
    application.add_middleware(
        PublishedResponses,
        enabled=settings.cache,
        max_bytes=int(settings.cache_max_mb * (1 << 20)),
        max_age=settings.cache_max_age,
    )
    application.add_middleware(
        GZipMiddleware, minimum_size=MIN_COMPRESS_BYTES, compresslevel=GZIP_LEVEL
    )
    application.mount("/static", StaticFiles(directory=PROJECT_ROOT / "static"), name="static")
    application.include_router(pages.router)
    application.include_router(findings.router)
    application.include_router(api.router)
    application.include_router(encode.router)
    application.include_router(export.router)

    @application.get("/healthz", tags=["ops"], summary="Liveness and store reachability")
    def healthz() -> dict[str, str]:
        engine = engine_for(get_settings().sqlalchemy_url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok", "database": engine.dialect.name}

    @application.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(exc.status_code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @application.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            error_body(422, "invalid request", jsonable_errors(exc)), status_code=422
        )

    return application


def jsonable_errors(exc: RequestValidationError) -> list[dict[str, object]]:
    return [
        {"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": err.get("type")}
        for err in exc.errors()
    ]


app = create_app()
