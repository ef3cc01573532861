"""Every error answer of the app, in one place: the JSON error shape, the HTML error page, and the
app-wide handlers that turn the query layer's ``NotFound`` (404) and ``BadCursor`` (422) into them,
so routes raise domain errors and never map them by hand.

Which form an error takes: a browser navigating to a page gets the HTML page, everything else the
JSON shape; the HTML pages fix theirs whatever the request accepts (``page_errors``), read here
from ``request.state``.
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.queries import BadCursor, NotFound
from app.templating import templates

ErrorStyle = Literal["page"]


def error_body(status: int, message: str, detail: object = None) -> dict[str, object]:
    """The one JSON error shape of the API."""
    return {"error": {"status": status, "message": message, "detail": detail}}


def page_errors(request: Request) -> None:
    """Router dependency of the HTML pages: their domain errors render the error page."""
    request.state.error_style = "page"


def install_error_handlers(application: FastAPI) -> None:
    """Register the handlers of HTTP errors, invalid requests and the domain errors."""
    application.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    application.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    application.add_exception_handler(NotFound, not_found)  # type: ignore[arg-type]
    application.add_exception_handler(BadCursor, bad_cursor)  # type: ignore[arg-type]


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    headers = getattr(exc, "headers", None)
    if wants_html(request):
        return error_page(request, exc.status_code, str(exc.detail), headers)
    return JSONResponse(
        error_body(exc.status_code, str(exc.detail)),
        status_code=exc.status_code,
        headers=headers,
    )


async def validation_error(request: Request, exc: RequestValidationError) -> Response:
    errors = jsonable_errors(exc)
    message = f"invalid request: {describe_errors(errors)}"
    if wants_html(request):
        return error_page(request, 422, message)
    return JSONResponse(error_body(422, message, errors), status_code=422)


async def not_found(request: Request, exc: NotFound) -> Response:
    """An unknown id, accession or term: 404 with the query layer's message."""
    return domain_error(request, 404, str(exc))


async def bad_cursor(request: Request, exc: BadCursor) -> Response:
    """A cursor that does not match the page's sort: 422, saying what it should look like."""
    return domain_error(request, 422, str(exc))


def domain_error(request: Request, status: int, message: str) -> Response:
    """A domain error in the form the route fixed, else as an ``HTTPException`` would answer."""
    style: ErrorStyle | None = getattr(request.state, "error_style", None)
    if style == "page" or wants_html(request):
        return error_page(request, status, message)
    return JSONResponse(error_body(status, message), status_code=status)


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
