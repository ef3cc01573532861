"""Steering and variant effects: ``POST /api/v1/steer``, ``POST /api/v1/variants`` and their pages.

Both validate the sequence as ``/encode`` does (same messages), load the dictionary through the
process's encoding service (models warm, forwards serialised per model), and run at most
``intervene_max_concurrent`` requests at once per process: beyond that, 503 with Retry-After.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.orm import Session

from app.deps import SessionDep, get_encoding_service, get_settings
from app.encoding.errors import EncodingUnavailable, UnknownSae
from app.encoding.validation import SEQUENCE_TEXT_PATTERN, EncodeInputError, parse_sequences
from app.esm_window import MAX_RESIDUES
from app.intervene.notation import POSITIONS_PATTERN, VARIANT_PATTERN
from app.queries import (
    FeatureChangeOut,
    FeatureRef,
    MaskedOut,
    SteeredPosition,
    SteerResponse,
    Substitute,
    SubstitutionScore,
    VariantOut,
    VariantsResponse,
    feature_info,
    match_protein,
    protein_sequence,
    published_sae_choices,
)
from app.routes.encode import read_body
from app.templating import templates

if TYPE_CHECKING:
    from app.encoding.service import DictionaryHandle

router = APIRouter(tags=["intervene"])
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


class Busy(RuntimeError):
    """Every intervention slot of this process is taken."""


class Gate:
    """At most ``capacity`` interventions at once; the next one is refused, not queued."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = capacity
        self._lock = threading.Lock()

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._lock:
            if self._free == 0:
                raise Busy(f"{self.capacity} interventions are running; retry shortly")
            self._free -= 1
        try:
            yield
        finally:
            with self._lock:
                self._free += 1


def _gate(request: Request) -> Gate:
    gate = getattr(request.app.state, "intervene_gate", None)
    if gate is None:
        gate = request.app.state.intervene_gate = Gate(
            get_settings(request).intervene_max_concurrent
        )
    return gate


# ---- request and response models -------------------------------------------------------------

# What the schema can state of a request (patterns stated in the schema and enforced by the parsers,
# whose messages name the record, character or mutation); what it cannot (a variant's wild-type residue against the
# sequence, positions within its length, a feature below the dictionary's latent count) is a 422.
Positions = (
    list[Annotated[int, Field(ge=1, le=100_000)]] | Annotated[str, Field(pattern=POSITIONS_PATTERN)]
)


class InterventionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feature: int = Field(ge=0, le=2**31 - 1, description="Latent index in the dictionary")
    mode: Literal["clamp", "scale", "ablate"]
    value: float | None = Field(
        default=None, ge=-1e4, le=1e4, description="clamp: the activation; scale: the factor"
    )
    positions: Positions = Field(
        default="all",
        description="'all', a list of 1-based positions, or ranges such as '10-20,33'",
    )


class SteerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sae_id: int = Field(ge=1, le=2**31 - 1)
    sequence: str = Field(
        min_length=1, max_length=20_000, description="One protein (or a FASTA with one record)",
        json_schema_extra={"pattern": SEQUENCE_TEXT_PATTERN},
    )  # fmt: skip
    interventions: list[InterventionIn] = Field(min_length=1, max_length=32)
    masked_positions: list[Annotated[int, Field(ge=1, le=100_000)]] = Field(
        default_factory=list,
        max_length=64,
        description="1-based positions to also score as masked marginals",
    )
    top_substitutions: int = Field(default=3, ge=1, le=19)


class VariantsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sae_id: int = Field(ge=1, le=2**31 - 1)
    sequence: str = Field(
        min_length=1, max_length=20_000, description="The wild type",
        json_schema_extra={"pattern": SEQUENCE_TEXT_PATTERN},
    )  # fmt: skip
    variants: list[Annotated[str, Field(json_schema_extra={"pattern": VARIANT_PATTERN})]] = Field(
        min_length=1, max_length=100, description="e.g. 'A123V', 'A123V:G130S', 'del45_50'"
    )
    top_features: int = Field(default=5, ge=1, le=50)


# ---- helpers -----------------------------------------------------------------------------------


def one_sequence(text: str) -> str:
    """One cleaned sequence within one forward pass, or :class:`EncodeInputError`."""
    records = parse_sequences(text, max_length=MAX_RESIDUES, max_records=1)
    return records[0].sequence


def parse_positions(spec: Positions, length: int, where: str) -> tuple[int, ...] | None:
    """``'all'`` -> None; ``[3, 5]`` or ``'3,10-20'`` (1-based) -> 0-based positions."""
    if spec == "all":
        return None
    if isinstance(spec, list):
        return tuple(p - 1 for p in spec)
    out: list[int] = []
    for part in spec.replace(" ", "").split(","):
        if not part:
            continue
        start, _, end = part.partition("-")
        if not start.isdigit() or (end and not end.isdigit()):
            raise EncodeInputError(
                f"{where}: cannot read positions {part!r} (use 'all', '12' or '10-20')"
            )
        low, high = int(start), int(end or start)
        if low > high:
            raise EncodeInputError(f"{where}: range {part} runs backwards")
        if high > length or low < 1:
            raise EncodeInputError(f"{where}: positions {part} outside 1..{length}")
        out.extend(range(low - 1, high))
    if not out:
        raise EncodeInputError(f"{where}: no positions given")
    return tuple(out)


def _round(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in values]


async def _handle(request: Request, session: Session, sae_id: int) -> DictionaryHandle:
    service = get_encoding_service(request)
    return await run_in_threadpool(service.handle, session, sae_id)


def _http(exc: Exception) -> HTTPException:
    """The one mapping from intervention errors to HTTP answers."""
    from app.intervene.steer import SteerError
    from app.intervene.variants import VariantError

    if isinstance(exc, EncodeInputError):
        return HTTPException(exc.status, str(exc))
    if isinstance(exc, SteerError | VariantError):
        return HTTPException(422, str(exc))
    if isinstance(exc, UnknownSae):
        return HTTPException(404, str(exc))
    if isinstance(exc, EncodingUnavailable):
        return HTTPException(503, f"model unavailable: {exc}", {"Retry-After": "60"})
    if isinstance(exc, Busy):
        return HTTPException(503, str(exc), {"Retry-After": "1"})
    raise exc


STEER_NOTE = (
    "Log-probabilities of the 20 amino acids from one unmasked forward pass (natural log, over "
    "ESM2's whole vocabulary), before and after the intervention. The stream at the SAE's layer "
    "becomes h + decode(z') − decode(z): the steered code's reconstruction plus the SAE's own "
    "reconstruction error, so an intervention that changes no value changes nothing."
)
VARIANT_NOTE = (
    "Score: ESM2's masked marginal, Σ over substitutions of log p(mutant) − log p(wild type) with "
    "that position masked in the wild type (fair-esm's variant-prediction scoring); deletions have "
    "none. Features: pooled values (max over residues, or the protein-level code) of wild type "
    "and mutant; tracks are mutant − wild type per wild-type position."
)


# ---- steering ----------------------------------------------------------------------------------


async def steer_request(request: Request, session: Session, req: SteerRequest) -> SteerResponse:
    try:
        sequence = one_sequence(req.sequence)
        from app.intervene.steer import Intervention, steer

        interventions = [
            Intervention(
                i.feature, i.mode, i.value,
                parse_positions(i.positions, len(sequence), f"interventions[{n}]"),
            )
            for n, i in enumerate(req.interventions)
        ]  # fmt: skip
        handle = await _handle(request, session, req.sae_id)
        masked = [p - 1 for p in req.masked_positions]

        def run() -> Any:
            with _gate(request).slot(), handle.esm.lock:
                return steer(
                    handle.esm.loaded, handle.module, handle.level, handle.layer,
                    sequence, interventions, masked,
                )  # fmt: skip

        result = await run_in_threadpool(run)
    except Exception as exc:
        raise _http(exc) from exc
    match = await run_in_threadpool(match_protein, session, sequence)
    return _steer_response(handle, sequence, result, req.top_substitutions, match)


def _steer_response(
    handle: DictionaryHandle, sequence: str, result: Any, top: int, match: Any
) -> SteerResponse:
    before, after = result.log_p_before, result.log_p_after
    delta = after - before
    argmax_before = before.argmax(axis=1)
    argmax_after = after.argmax(axis=1)
    residue_level = handle.level == "residue"
    positions = []
    for i, residue in enumerate(sequence):
        order = np.argsort(-delta[i], kind="stable")[:top]
        positions.append(SteeredPosition(
            position=i + 1, residue=residue,
            log_p_before=_round(before[i]), log_p_after=_round(after[i]),
            argmax_before=AMINO_ACIDS[argmax_before[i]], argmax_after=AMINO_ACIDS[argmax_after[i]],
            top_substitutions=[
                Substitute(amino_acid=AMINO_ACIDS[j], delta_log_p=round(float(delta[i, j]), 4),
                           p_after=round(float(np.exp(after[i, j])), 4))
                for j in order
            ],
            feature_before=_round(result.feature_before[i]) if residue_level else None,
            feature_after=_round(result.feature_after[i]) if residue_level else None,
        ))  # fmt: skip
    return SteerResponse(
        sae_id=handle.sae_id, level=handle.level, layer=handle.layer, sequence=sequence,
        amino_acids=AMINO_ACIDS,
        steered_sequence="".join(AMINO_ACIDS[j] for j in argmax_after),
        changed_positions=[int(i) + 1 for i in np.flatnonzero(argmax_after != argmax_before)],
        pooled_before=None if residue_level else _round(result.feature_before[0]),
        pooled_after=None if residue_level else _round(result.feature_after[0]),
        positions=positions,
        masked=[MaskedOut(position=p + 1, log_p_before=_round(b), log_p_after=_round(a))
                for p, (b, a) in sorted(result.masked.items())],
        match=match,
        note=STEER_NOTE, provenance=handle.provenance,
    )  # fmt: skip


def _validated(model: type[BaseModel], body: bytes) -> Any:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc


_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No published dictionary with that id"},
    413: {"description": "Body or sequence over the limit"},
    422: {"description": "Bad sequence, intervention or mutation (which and where)"},
    503: {"description": "All intervention slots busy (Retry-After) or model unavailable"},
}


@router.post(
    "/api/v1/steer",
    response_model=SteerResponse,
    summary="Clamp, scale or ablate SAE features on a sequence; amino-acid predictions before/after",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": SteerRequest.model_json_schema()}}}},
    responses=_ERRORS,
)  # fmt: skip
async def steer_api(request: Request, session: SessionDep) -> SteerResponse:
    req = _validated(SteerRequest, await read_body(request, get_settings(request).max_body_bytes))
    return await steer_request(request, session, req)


# ---- variants ----------------------------------------------------------------------------------


async def variants_request(
    request: Request, session: Session, req: VariantsRequest
) -> VariantsResponse:
    from app.encoding.service import encode_with
    from app.intervene.variants import (
        feature_changes,
        masked_log_probs,
        masked_marginal_score,
        mutant_sequence,
        parse_variants,
    )

    try:
        sequence = one_sequence(req.sequence)
        variants = parse_variants(req.variants, sequence)
        handle = await _handle(request, session, req.sae_id)
        mutants = [mutant_sequence(sequence, v) for v in variants]
        positions = [s.position for v in variants for s in v.substitutions]

        def run() -> Any:
            with _gate(request).slot():
                with handle.esm.lock:
                    log_probs = masked_log_probs(handle.esm.loaded, sequence, positions)
                encodings = encode_with(handle, [sequence] + [m for m, _ in mutants])
            return log_probs, encodings

        log_probs, encodings = await run_in_threadpool(run)
    except Exception as exc:
        raise _http(exc) from exc
    idx = handle.esm.alphabet.get_idx
    wt = encodings[0]
    outs = []
    for variant, (mutant, origin), enc in zip(variants, mutants, encodings[1:], strict=True):
        gained, lost, changes = feature_changes(
            wt.residue, wt.pooled, enc.residue, enc.pooled, origin, req.top_features
        )
        info = feature_info(
            session, handle.sae_id, gained[:20] + lost[:20] + [c.index for c in changes]
        )

        def ref(i: int, info: Any = info) -> dict[str, Any]:
            meta = info.get(i)
            return {"index": i, "feature_id": meta.feature_id if meta else None,
                    "label": meta.label if meta else None}  # fmt: skip

        score = masked_marginal_score(handle.esm.loaded, variant, log_probs)
        outs.append(VariantOut(
            name=variant.name, mutant_length=len(mutant), score=score,
            score_note=None if score is not None else "deletions have no masked-marginal score",
            substitutions=[
                SubstitutionScore(
                    position=s.position, wild_type=s.wild_type, mutant=s.mutant,
                    log_p_wild_type=float(log_probs[s.position][idx(s.wild_type)]),
                    log_p_mutant=float(log_probs[s.position][idx(s.mutant)]),
                    score=float(log_probs[s.position][idx(s.mutant)]
                                - log_probs[s.position][idx(s.wild_type)]),
                )
                for s in variant.substitutions
            ],
            gained=[FeatureRef(**ref(i)) for i in gained[:20]],
            lost=[FeatureRef(**ref(i)) for i in lost[:20]],
            top_changes=[
                FeatureChangeOut(
                    **ref(c.index), before=round(c.before, 4), after=round(c.after, 4),
                    delta=round(c.delta, 4),
                    track=[None if np.isnan(v) else round(float(v), 4) for v in c.track],
                )
                for c in changes
            ],
        ))  # fmt: skip
    match = match_protein(session, sequence)
    return VariantsResponse(
        sae_id=handle.sae_id, level=handle.level, layer=handle.layer, sequence=sequence,
        variants=outs, note=VARIANT_NOTE, provenance=handle.provenance,
        match=match,
    )  # fmt: skip


@router.post(
    "/api/v1/variants",
    response_model=VariantsResponse,
    summary="Score variants of a wild type (ESM2 masked marginals) and the features they change",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": VariantsRequest.model_json_schema()}}}},
    responses=_ERRORS,
)  # fmt: skip
async def variants_api(request: Request, session: SessionDep) -> VariantsResponse:
    req = _validated(
        VariantsRequest, await read_body(request, get_settings(request).max_body_bytes)
    )
    return await variants_request(request, session, req)


# ---- pages -------------------------------------------------------------------------------------


@router.get("/steer", response_class=HTMLResponse, include_in_schema=False)
def steer_page(request: Request, session: SessionDep) -> Response:
    """The steering page; query parameters prefill it (``sae_id``, ``feature``, and ``sequence``
    or the ``accession`` of a stored protein, whose sequence it then shows)."""
    params = request.query_params
    form = {k: v for k, v in params.items() if k in {"sae_id", "feature", "sequence"}}
    if "sequence" not in form and "accession" in params:
        form["sequence"] = protein_sequence(session, params["accession"])
    saes = [s for s in published_sae_choices(session) if s["kind"] not in {"neurons", "transcoder"}]
    return templates.TemplateResponse(request, "steer.html", {"saes": saes, "form": form})


@router.get("/variants", response_class=HTMLResponse, include_in_schema=False)
def variants_page(request: Request, session: SessionDep) -> Response:
    form = {k: v for k, v in request.query_params.items() if k in {"sae_id", "sequence"}}
    return templates.TemplateResponse(
        request, "variants.html", {"saes": published_sae_choices(session), "form": form}
    )
