"""Bulk export of one dictionary: features with labels and GO hits (CSV, JSON), and its weights
(our safetensors as trained, or a SAELens-style folder zipped) so others can load our SAEs."""

from __future__ import annotations

import csv
import importlib
import io
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from sqlalchemy.orm import Session

from app.deps import SessionDep
from app.queries import SaeExport, export_features, exportable_sae
from app.store.schema import Sae

router = APIRouter(
    prefix="/api/v1/saes",
    tags=["export"],
    responses={404: {"description": "No published SAE with that id, or no weights for it"}},
)
SaeId = Annotated[int, PathParam(ge=1, le=2**31 - 1, description="The dictionary's id")]

CSV_COLUMNS = (
    "index", "feature_id", "label", "label_source", "explanation", "explanation_model",
    "explanation_score", "density", "n_active", "max_activation", "mean_activation", "is_dead",
    "pattern_class", "n_go_hits", "n_go_hits_length", "go_hits", "n_go_hits_paper", "go_hits_paper",
    "aa_top", "aa_top_share", "aa_detector", "aa_n_residues", "aa_profile", "promotes",
    "suppresses", "top_domain", "top_domain_source", "n_domain_hits", "n_domain_hits_length",
    "domain_hits",
)  # fmt: skip


def _exportable_or_404(session: Session, sae_id: int) -> Sae:
    """The SAE if its run is published; 404 otherwise."""
    sae = exportable_sae(session, sae_id)
    if sae is None:
        raise HTTPException(404, f"no published SAE with id {sae_id}")
    return sae


def _filename(sae: Sae, suffix: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{sae.run.name}-{sae.name}") + suffix


@router.get("/{sae_id}/export.json", response_model=SaeExport, summary="All features, JSON")
def export_json(sae_id: SaeId, session: SessionDep) -> SaeExport:
    return export_features(session, _exportable_or_404(session, sae_id))


@router.get(
    "/{sae_id}/export.csv",
    summary="All features with labels, explanation, score and GO hits, CSV",
    response_class=Response,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
def export_csv(sae_id: SaeId, session: SessionDep) -> Response:
    sae = _exportable_or_404(session, sae_id)
    data = export_features(session, sae)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for f in data.features:
        row: dict[str, Any] = f.model_dump(
            exclude={"go_hits", "go_hits_paper", "lm_effect", "domain_hits"}
        )
        row["domain_hits"] = ";".join(
            f"{h.accession}|{h.source}|{h.protocol}|"
            + (
                f"q={h.q_value:.3g}"
                if h.q_value is not None
                else f"p_bonferroni={h.p_bonferroni:.3g}"
            )
            + ("" if h.q_length is None else f"|q_length={h.q_length:.3g}")
            + ("|length_explained" if h.length_explained else "")
            for h in f.domain_hits
        )
        row["n_go_hits"] = len(f.go_hits)
        effect = f.lm_effect
        row["promotes"] = (
            ";".join(f"{x.amino_acid}|{x.mean:+.3f}" for x in effect.promoted) if effect else None
        )
        row["suppresses"] = (
            ";".join(f"{x.amino_acid}|{x.mean:+.3f}" for x in effect.suppressed) if effect else None
        )
        row["aa_profile"] = (
            None
            if f.aa_profile is None
            else ";".join(f"{k}={v:.4g}" for k, v in f.aa_profile.items() if v > 0)
        )
        row["go_hits"] = ";".join(
            f"{h.go_id}|{h.name}|q={h.q_value:.3g}"
            + ("" if h.q_length is None else f"|q_length={h.q_length:.3g}")
            + ("|length_explained" if h.length_explained else "")
            for h in f.go_hits
            if h.q_value is not None
        )
        row["go_hits_paper"] = ";".join(
            f"{h.go_id}|{h.name}|p_bonferroni={h.p_bonferroni:.3g}"
            + ("|depleted" if h.depleted else "")
            for h in f.go_hits_paper
        )
        writer.writerow(["" if row[c] is None else row[c] for c in CSV_COLUMNS])
    headers = {"Content-Disposition": f'attachment; filename="{_filename(sae, ".csv")}"'}
    return Response(buffer.getvalue(), media_type="text/csv", headers=headers)


def _weights_dir(sae: Sae) -> Path:
    if sae.kind == "neurons":
        raise HTTPException(404, f"SAE {sae.id} is the raw-neuron baseline: it has no weights")
    if not sae.weights_path:
        raise HTTPException(404, f"SAE {sae.id} ({sae.name}) has no weights in the store")
    path = Path(sae.weights_path)
    directory = path.parent if path.is_file() else path
    if not (directory / "sae.safetensors").is_file():
        raise HTTPException(404, f"weights of SAE {sae.id} are not on this server")
    return directory


@router.get(
    "/{sae_id}/weights.safetensors",
    summary="The dictionary's weights as trained (safetensors)",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string"}}}}},
)
def export_weights(sae_id: SaeId, session: SessionDep) -> FileResponse:
    sae = _exportable_or_404(session, sae_id)
    path = _weights_dir(sae) / "sae.safetensors"
    return FileResponse(path, media_type="application/octet-stream",
                        filename=_filename(sae, ".safetensors"))  # fmt: skip


@router.get(
    "/{sae_id}/saelens.zip",
    summary="A SAELens 6.x folder (cfg.json + sae_weights.safetensors), zipped",
    description=(
        "`normalize=none` (default) is exact: apply our LayerNorm first, "
        "`sae.encode(torch.nn.functional.layer_norm(x, (d_in,), eps=1e-5))`. "
        "`normalize=layer_norm` lets SAELens normalise (unbiased std + eps): "
        "sae.encode(x) then differs from ours by the eps placement only (relative < eps/std(x)). "
        "cfg.json's metadata.usage says which applies."
    ),
    response_class=Response,
    responses={200: {"content": {"application/zip": {"schema": {"type": "string"}}}}},
)
def export_saelens_zip(
    sae_id: SaeId,
    session: SessionDep,
    normalize: Annotated[
        Literal["none", "layer_norm"],
        Query(description="who applies the LayerNorm: you (none, exact) or SAELens (layer_norm)"),
    ] = "none",
) -> Response:
    sae = _exportable_or_404(session, sae_id)
    directory = _weights_dir(sae)
    try:
        sae_mod = importlib.import_module("app.sae")
    except ImportError as exc:
        raise HTTPException(
            503, "the SAE module (app.sae) is not installed on this server"
        ) from exc
    module = sae_mod.load_dictionary(directory)
    folder = _filename(sae, "")
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            out = Path(
                sae_mod.export_saelens(
                    module, Path(tmp) / folder, source_dir=directory, normalize=normalize
                )
            )
        except ValueError as exc:
            raise HTTPException(404, f"SAE {sae.id}: {exc}") from exc
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(out.iterdir()):
                archive.write(file, f"{folder}/{file.name}")
    headers = {"Content-Disposition": f'attachment; filename="{folder}-saelens.zip"'}
    return Response(buffer.getvalue(), media_type="application/zip", headers=headers)
