"""The ASGI application: ``app.main:app``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.gzip import GZipMiddleware

from app.http_cache import GZIP_LEVEL, MIN_COMPRESS_BYTES, PublishedResponses
from app.routes import api, encode, export, findings, intervene, pages, worklist
from app.settings import PROJECT_ROOT, get_settings
from app.store.engine import engine_for
from app.templating import templates


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
    application.include_router(worklist.router)
    application.include_router(encode.router)
    application.include_router(intervene.router)
    application.include_router(export.router)

    @application.get("/healthz", tags=["ops"], summary="Liveness and store reachability")
    def healthz() -> dict[str, str]:
        engine = engine_for(get_settings().sqlalchemy_url)
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

    @application.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = getattr(exc, "headers", None)
        if wants_html(request):
            return error_page(request, exc.status_code, str(exc.detail), headers)
        return JSONResponse(
            error_body(exc.status_code, str(exc.detail)),
            status_code=exc.status_code,
            headers=headers,
        )

    @application.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = jsonable_errors(exc)
        message = f"invalid request: {describe_errors(errors)}"
        if wants_html(request):
            return error_page(request, 422, message)
        return JSONResponse(error_body(422, message, errors), status_code=422)

    return application


def jsonable_errors(exc: RequestValidationError) -> list[dict[str, object]]:
    return [
        {"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": err.get("type")}
        for err in exc.errors()
    ]


def describe_errors(errors: list[dict[str, object]], limit: int = 3) -> str:
    """What is wrong and where, in words: ``query limit: Input should be greater than 0``."""
    parts = []
    for err in errors[:limit]:
        loc = [str(part) for part in err["loc"]] if isinstance(err["loc"], list) else []
        where = " ".join([loc[0], ".".join(loc[1:])] if len(loc) > 1 else loc)
        parts.append(f"{where}: {err['msg']}" if where else str(err["msg"]))
    more = len(errors) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def wants_html(request: Request) -> bool:
    """A browser navigating to a page (not the API, not an htmx fragment request) gets an HTML
    error page; everything else gets the JSON error shape."""
    return (
        not request.url.path.startswith("/api/")
        and "text/html" in request.headers.get("accept", "")
        and request.headers.get("HX-Request") != "true"
    )


def error_page(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    return templates.TemplateResponse(
        request,
        "error.html",
        {"status": status, "message": message},
        status_code=status,
        headers=headers,
    )


app = create_app()
