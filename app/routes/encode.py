"""Paste a sequence, see its features: ``POST /api/v1/encode`` and the ``/encode`` page.

Both go through :func:`encode_request`, so the page and the API always agree. Bodies are read
with a byte limit before parsing (413), bad sequences answer 4xx naming what is wrong and where,
a full queue answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session

from app.deps import HtmxDep, SessionDep
from app.esm_window import MAX_RESIDUES

if TYPE_CHECKING:  # torch loads only when a sequence is encoded, never for the other pages
    from app.encoding.service import EncodingService
from app.encoding.batcher import QueueFull
from app.encoding.errors import EncodingUnavailable, UnknownSae
from app.encoding.validation import (
    SEQUENCE_TEXT_PATTERN,
    EncodeInputError,
    parse_sequence_list,
    parse_sequences,
)
from app.queries import (
    EncodeResponse,
    FeatureHit,
    Quality,
    SequenceResult,
    feature_info,
    match_protein,
    published_sae_choices,
    stored_structure,
)
from app.settings import get_settings
from app.structure_files import structure_response
from app.templating import templates

router = APIRouter(tags=["encode"])


def _accepted_input(schema: dict[str, Any]) -> None:
    """State in the schema what the parser accepts: exactly one of ``sequences`` (a non-empty
    list) and ``fasta``, every text of the accepted form (``SEQUENCE_TEXT_PATTERN``). The parser
    enforces the same with messages naming the record, character and position; sizes beyond the
    server's limits answer 413."""
    text = {"type": "string", "pattern": SEQUENCE_TEXT_PATTERN}
    props = schema["properties"]
    props["sequences"]["anyOf"] = [
        {"type": "array", "items": text, "minItems": 1},
        {"type": "null"},
    ]
    props["fasta"]["anyOf"] = [text, {"type": "null"}]
    schema["oneOf"] = [
        {"required": ["sequences"], "properties": {"sequences": {"type": "array"}}},
        {"required": ["fasta"], "properties": {"fasta": {"type": "string"}}},
    ]


def _json_integer(value: Any) -> Any:
    """JSON Schema's integer: 3 and 3.0, never "3" or true (what the schema says)."""
    if isinstance(value, str | bool):
        raise ValueError("must be a JSON integer, not a string or boolean")
    return value


# The request is strict (no "0.5" for a number, no 0 for a boolean), except that an integer
# may be written 3.0, as JSON Schema allows.
JsonInt = Annotated[int, BeforeValidator(_json_integer), Field(strict=False)]


class EncodeRequest(BaseModel):
    """One or several sequences (``sequences``: bare or FASTA strings; or one ``fasta`` text)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_accepted_input)

    sae_id: JsonInt = Field(ge=1, le=2**31 - 1, description="The dictionary to encode with")
    sequences: list[str] | None = Field(default=None, description="Bare sequences or FASTA texts")
    fasta: str | None = Field(default=None, description="A FASTA text with one or more records")
    top_n: JsonInt = Field(
        default=20, ge=1, le=1000, description="Active features returned per sequence"
    )
    rank_by: Literal["max", "mean"] = "max"
    hide_dense: bool = Field(default=False, description="Drop features denser than dense_threshold")
    dense_threshold: float = Field(default=0.5, gt=0, le=1)
    include_residues: bool = Field(default=True, description="Per-residue values per feature")


def get_service(request: Request) -> EncodingService:
    """The process's encoding service (models stay warm on ``app.state``)."""
    service = getattr(request.app.state, "encoding", None)
    if service is None:
        from app.encoding.service import EncodingService

        service = request.app.state.encoding = EncodingService(get_settings())
    return service


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (413) before reading it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _records(req: EncodeRequest) -> list[Any]:
    settings = get_settings()
    limits = {"max_length": settings.max_sequence_length, "max_records": settings.max_fasta_records}
    if (req.sequences is None) == (req.fasta is None):
        raise EncodeInputError("give exactly one of 'sequences' or 'fasta'", 422)
    if req.fasta is not None:
        return parse_sequences(req.fasta, **limits)
    return parse_sequence_list(req.sequences or [], **limits)


async def encode_request(request: Request, session: Session, req: EncodeRequest) -> EncodeResponse:
    """Validate, encode (cache + batching queue), rank, and join labels and provenance."""
    try:
        records = _records(req)
        service = get_service(request)
        handle = await run_in_threadpool(service.handle, session, req.sae_id)
        encodings = await service.encode(handle, [r.sequence for r in records])
    except EncodeInputError as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    except UnknownSae as exc:
        raise HTTPException(404, str(exc)) from exc
    except EncodingUnavailable as exc:
        raise HTTPException(503, f"encoding unavailable: {exc}", {"Retry-After": "60"}) from exc
    except QueueFull as exc:
        raise HTTPException(503, str(exc), {"Retry-After": str(exc.retry_after)}) from exc
    results = []
    for record, enc in zip(records, encodings, strict=True):
        from app.encoding.ranking import rank_features

        ranking = rank_features(
            handle, enc, top_n=req.top_n, rank_by=req.rank_by, hide_dense=req.hide_dense,
            dense_threshold=req.dense_threshold, include_residues=req.include_residues,
        )  # fmt: skip
        info = await run_in_threadpool(
            feature_info, session, handle.sae_id, [f.index for f in ranking.features]
        )
        match = await run_in_threadpool(match_protein, session, record.sequence)
        notes = []
        if record.windowed:
            notes.append(
                f"{record.length} residues exceed the model's window of {MAX_RESIDUES}: embedded in "
                "windows and stitched (each residue from the window where it is most central)"
            )
        features = []
        for f in ranking.features:
            meta = info.get(f.index)
            features.append(FeatureHit(
                index=f.index, feature_id=meta.feature_id if meta else None,
                label=meta.label if meta else None,
                explanation=meta.explanation if meta else None,
                explanation_score=meta.explanation_score if meta else None,
                density=f.density, max=f.max, mean=f.mean,
                n_active_residues=f.n_active_residues, max_position=f.max_position,
                values=f.values,
            ))  # fmt: skip
        results.append(SequenceResult(
            id=record.id, sequence=record.sequence, length=record.length,
            sha256=hashlib.sha256(record.sequence.encode()).hexdigest(),
            windowed=record.windowed, notes=notes, n_active_features=ranking.n_active,
            n_hidden_dense=ranking.n_hidden_dense, features=features,
            quality=Quality(**service.quality(handle, enc.fve)),
            match=match,
        ))  # fmt: skip
    return EncodeResponse(
        sae_id=handle.sae_id, level=handle.level, rank_by=req.rank_by,
        provenance=handle.provenance, results=results,
    )  # fmt: skip


_REQUEST_SCHEMA = EncodeRequest.model_json_schema()


@router.post(
    "/api/v1/encode",
    response_model=EncodeResponse,
    summary="Encode sequences with an SAE: active features, per residue and pooled (sparse)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _REQUEST_SCHEMA}},
        }
    },
    responses={
        404: {"description": "No published SAE with that id"},
        413: {"description": "Body, sequence or record count over the limit"},
        422: {"description": "Empty input or a non-amino-acid character (which and where)"},
        503: {"description": "Queue full (Retry-After) or model unavailable"},
    },
)
async def encode_api(request: Request, session: SessionDep) -> EncodeResponse:
    body = await read_body(request, get_settings().max_body_bytes)
    try:
        req = EncodeRequest.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc
    return await encode_request(request, session, req)


@router.get("/encode", response_class=HTMLResponse, include_in_schema=False)
def encode_page(request: Request, session: SessionDep) -> Response:
    ctx: dict[str, Any] = {"saes": published_sae_choices(session), "form": {}, "result": None}
    ctx["error"] = None
    return templates.TemplateResponse(request, "encode.html", ctx)


@router.post("/encode", response_class=HTMLResponse, include_in_schema=False)
async def encode_form(request: Request, session: SessionDep, htmx: HtmxDep) -> Response:
    """The page's form (urlencoded): the same encoding as the API, rendered server-side."""
    body = await read_body(request, get_settings().max_body_bytes)
    form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    ctx: dict[str, Any] = {"saes": published_sae_choices(session), "form": form, "result": None}
    status = 200
    try:
        req = EncodeRequest(
            sae_id=int(form.get("sae_id", "0") or 0),
            fasta=form.get("text", ""),
            top_n=int(form.get("top_n", "20") or 20),
            rank_by="mean" if form.get("rank_by") == "mean" else "max",
            hide_dense=form.get("hide_dense") in {"on", "true", "1"},
        )  # fmt: skip
        result = await encode_request(request, session, req)
        ctx["result"] = result
        ctx["result_json"] = result.model_dump_json()
        ctx["error"] = None
    except (ValidationError, ValueError) as exc:
        ctx["error"], status = f"invalid form: {exc}", 422
    except HTTPException as exc:
        ctx["error"], status = str(exc.detail), exc.status_code
    block = "results" if htmx else None
    return templates.TemplateResponse(
        request, "encode.html", ctx, status_code=status, block_name=block
    )


@router.get("/encode/structure/{structure_id}", include_in_schema=False)
def structure_file(
    structure_id: Annotated[int, PathParam(ge=1, le=2**31 - 1)], session: SessionDep
) -> Response:
    """A stored structure's coordinates as text, for the 3D view (paths come from the store)."""
    return structure_response(stored_structure(session, structure_id), structure_id)
