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
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.deps import SessionDep
from app.detail_queries import analysis_payload, go_alphas, go_protocols
from app.domain_queries import domain_hit
from app.read_models import DomainHitOut, GoProtocolOut, LmEffect
from app.residue_types import ALPHABET
from app.store.schema import DomainEnrichment, Explanation, Feature, GoEnrichment, GoTerm, Run, Sae

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


class GoHitOut(BaseModel):
    protocol: str  # strict (ours) | paper (the seed paper's); see SaeExport.go_protocols
    go_id: str
    name: str
    namespace: str
    p_value: float  # one-sided under strict, two-sided under paper
    q_value: float | None  # BH over all tests of the dictionary (strict); null under paper
    p_bonferroni: float  # within the feature: the namespace's terms (strict), every BP term (paper)
    depleted: bool  # fold < 1: a hit only under paper, which tests both directions
    q_length: float | None  # length-stratified BH; null for runs published before that test
    length_explained: bool | None  # q_length >= the dictionary's go_alpha; null without q_length
    fold_enrichment: float
    study_hits: int
    study_size: int


class FeatureExport(BaseModel):
    index: int
    feature_id: int
    label: str | None
    label_source: str | None
    explanation: str | None
    explanation_model: str | None
    explanation_score: float | None
    density: float
    n_active: int
    max_activation: float
    mean_activation: float
    is_dead: bool
    pattern_class: str | None
    n_go_hits_length: int | None
    go_hits: list[GoHitOut]  # strict protocol
    n_go_hits_paper: int | None  # null: the paper protocol was not run for this dictionary
    go_hits_paper: list[GoHitOut]
    aa_top: str | None = Field(description="Residue type carrying most of the activation mass")
    aa_top_share: float | None
    aa_detector: bool | None = Field(description="A single-type detector")
    aa_n_residues: int | None = Field(description="Residues the profile is computed over")
    aa_profile: dict[str, float] | None = Field(
        description="Share of the activation mass per residue type (one-letter code; X: "
        "non-standard); null for runs published before amino-acid profiles"
    )
    lm_effect: LmEffect | None  # what it makes the model predict, by intervention
    top_domain: str | None = Field(
        description="The Pfam / PROSITE family beyond length with the lowest length-adjusted q"
    )
    top_domain_source: str | None
    n_domain_hits: int | None = Field(description="Families with q < alpha; null: not run")
    n_domain_hits_length: int | None = Field(description="Of those, beyond protein length")
    domain_hits: list[DomainHitOut] = Field(description="Family hits, both protocols")


class SaeExport(BaseModel):
    sae_id: int
    sae_name: str
    kind: str
    level: str
    layer: int
    n_latents: int
    run_name: str
    base_model: str
    checkpoint_sha256: str
    go_alpha: float  # significance level of the dictionary's GO stage (its length verdicts)
    go_protocols: list[GoProtocolOut]  # each protocol's statement and settings
    is_control: bool = Field(description="A control dictionary (trained on a random-init model)")
    aa_profile_basis: str | None = Field(
        description="What the amino-acid profiles are computed on: corpus (every residue a "
        "residue-level feature fires on) or examples (positive per-residue attribution over a "
        "protein-level feature's example proteins)"
    )
    features: list[FeatureExport]


def published_sae(session: Session, sae_id: int) -> Sae:
    """The SAE if its run is published; 404 otherwise."""
    sae = session.get(Sae, sae_id)
    if sae is None or sae.run.status != "published":
        raise HTTPException(404, f"no published SAE with id {sae_id}")
    return sae


def export_features(session: Session, sae: Sae) -> SaeExport:
    """Every feature of ``sae`` with its newest explanation and its GO hits (by q-value)."""
    explanations: dict[int, tuple[str | None, str | None]] = {}
    for fid, text, model in session.execute(
        select(Explanation.feature_id, Explanation.text, Explanation.model)
        .join(Feature, Feature.id == Explanation.feature_id)
        .where(Feature.sae_id == sae.id)
        .order_by(Explanation.created_at, Explanation.id)
    ):
        explanations[fid] = (text, model)
    alpha = go_alphas(session, [sae.id])[sae.id]
    hits: dict[tuple[str, int], list[GoHitOut]] = {}
    for hit, name in session.execute(
        select(GoEnrichment, GoTerm.name)
        .join(GoTerm, GoTerm.id == GoEnrichment.go_id)
        .where(GoEnrichment.sae_id == sae.id)
        .order_by(GoEnrichment.feature_id, GoEnrichment.q_value, GoEnrichment.p_value)
    ):
        hits.setdefault((hit.protocol, hit.feature_id), []).append(GoHitOut(
            protocol=hit.protocol, go_id=hit.go_id, name=name, namespace=hit.namespace,
            p_value=hit.p_value, q_value=hit.q_value, p_bonferroni=hit.p_bonferroni,
            depleted=hit.fold_enrichment < 1, q_length=hit.q_length,
            length_explained=None if hit.q_length is None else hit.q_length >= alpha,
            fold_enrichment=hit.fold_enrichment,
            study_hits=hit.study_hits, study_size=hit.study_size,
        ))  # fmt: skip
    domain_hits: dict[int, list[DomainHitOut]] = {}
    for row in session.scalars(
        select(DomainEnrichment).where(DomainEnrichment.sae_id == sae.id)
        .order_by(DomainEnrichment.feature_id, DomainEnrichment.protocol.desc(),
                  DomainEnrichment.q_value, DomainEnrichment.p_value)
    ):  # fmt: skip
        domain_hits.setdefault(row.feature_id, []).append(domain_hit(row, alpha))
    features = []
    for f in session.scalars(
        select(Feature).where(Feature.sae_id == sae.id).order_by(Feature.index)
    ):
        expl_text, expl_model = explanations.get(f.id, (None, None))
        features.append(FeatureExport(
            index=f.index, feature_id=f.id, label=f.auto_label, label_source=f.auto_label_source,
            explanation=expl_text, explanation_model=expl_model, explanation_score=f.explanation_score,
            density=f.density, n_active=f.n_active, max_activation=f.max_activation,
            mean_activation=f.mean_activation, is_dead=f.is_dead, pattern_class=f.pattern_class,
            n_go_hits_length=f.n_go_hits_length, go_hits=hits.get(("strict", f.id), []),
            n_go_hits_paper=f.n_go_hits_paper, go_hits_paper=hits.get(("paper", f.id), []),
            aa_top=f.aa_top, aa_top_share=f.aa_top_share, aa_detector=f.aa_detector,
            aa_n_residues=f.aa_n_residues,
            aa_profile=None if not f.aa_profile else dict(zip(ALPHABET, f.aa_profile, strict=True)),
            lm_effect=LmEffect.from_stored(f.lm_effect), top_domain=f.top_domain,
            top_domain_source=f.top_domain_source, n_domain_hits=f.n_domain_hits,
            n_domain_hits_length=f.n_domain_hits_length, domain_hits=domain_hits.get(f.id, []),
        ))  # fmt: skip
    run: Run = sae.run
    return SaeExport(
        sae_id=sae.id, sae_name=sae.name, kind=sae.kind, level=sae.level, layer=sae.layer,
        n_latents=sae.n_latents, run_name=run.name, base_model=run.base_model,
        checkpoint_sha256=run.checkpoint_sha256, go_alpha=alpha,
        go_protocols=go_protocols(session, {sae.id}), is_control=sae.is_control,
        aa_profile_basis=_aa_basis(session, sae), features=features,
    )  # fmt: skip


def _aa_basis(session: Session, sae: Sae) -> str | None:
    """The analysis summary's profile basis; None where the run has no profiles."""
    payload = analysis_payload(session, sae.id)
    info = payload.get("aa_profile") if isinstance(payload, dict) else None
    return str(info["basis"]) if isinstance(info, dict) and "basis" in info else None


def _filename(sae: Sae, suffix: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{sae.run.name}-{sae.name}") + suffix


@router.get("/{sae_id}/export.json", response_model=SaeExport, summary="All features, JSON")
def export_json(sae_id: SaeId, session: SessionDep) -> SaeExport:
    return export_features(session, published_sae(session, sae_id))


@router.get(
    "/{sae_id}/export.csv",
    summary="All features with labels, explanation, score and GO hits, CSV",
    response_class=Response,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
def export_csv(sae_id: SaeId, session: SessionDep) -> Response:
    sae = published_sae(session, sae_id)
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
    sae = published_sae(session, sae_id)
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
    sae = published_sae(session, sae_id)
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
