"""Analyze: encode every protein with a dictionary and summarise each feature.

For every feature: activation density, max, mean, a histogram; the top proteins overall, per
activation-quantile bin (like InterPLM/InterProt) and among proteins with a structure, each with
per-residue values (residue level: the feature's activation at each residue; protein level: the
exact per-residue attribution of the pooled pre-activation); decoder-cosine neighbours; and per
protein its most active features. A protein-level dictionary of a layer embedded pooled-only gets
its example proteins' residues from a ``residue_source`` (the caller's model; analyze loads none).
Everything is written under ``analysis/{name}/`` as ``.npz`` files, the ``DONE`` marker last.

This module runs the stage for one dictionary and writes its files; the work is done by
``trainer.protein_activations`` (the encoding pass), ``trainer.feature_stats`` (statistics and
example selection), ``trainer.residue_tracks`` (per-residue values and structure coverage) and
``trainer.feature_rankings`` (decoder neighbours, each protein's top features).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from pydantic import BaseModel, Field

from app.atomic_write import atomic_file, write_atomic
from app.esm import resolve_device
from app.sae import Dictionary
from app.stage_summaries import AnalysisSummaryDoc
from trainer.aa_profile import AaMass, AaProfile, profile_from_tracks
from trainer.analysis_files import Examples, FeatureMap, FeatureStats, Neighbors, ProteinTop
from trainer.embedding_store import EmbeddingStore, ResidueSource
from trainer.engines import Engine
from trainer.feature_map import MapConfig, feature_map
from trainer.feature_rankings import decoder_neighbors, protein_top_features
from trainer.feature_stats import feature_stats, select_examples
from trainer.layout import AnalysisFiles, RunLayout
from trainer.protein_activations import (
    FloatArray,
    device_of,
    has_fve,
    per_protein_fve,
    protein_activations,
)
from trainer.residue_tracks import residue_tracks, structure_coverage
from trainer.stage_driver import StageUnit, run_unit
from trainer.structure_coverage import Chain, PairCoverage

# What an analysis holds beyond its settings' results, part of its stamp: 2 added the amino-acid
# profiles (``aa_profile.npz``), so analyses made before them are made again.
OUTPUTS_VERSION = 2

SPEED_ONLY_FIELDS = {"batch_size", "max_residues_per_batch", "max_residues_per_track_batch",
                     "device", "residue_cache_gib"}  # fmt: skip


class AnalyzeConfig(BaseModel):
    """How many examples each feature keeps, and how they are binned."""

    n_top: int = Field(default=10, ge=1, description="top proteins per feature (bin 'top')")
    n_bins: int = Field(
        default=5, ge=1, description="equal-width bins of max-normalised activation"
    )
    per_bin: int = Field(default=5, ge=0, description="proteins sampled per quantile bin")
    n_structure: int = Field(
        default=5, ge=0, description="top proteins among those with a structure"
    )
    n_hist_bins: int = Field(default=24, ge=2)
    n_neighbors: int = Field(default=10, ge=0)
    protein_top_features: int = Field(default=10, ge=1)
    batch_size: int = Field(default=2048, ge=1)
    max_residues_per_batch: int = Field(default=65_536, ge=1)
    max_residues_per_track_batch: int = Field(
        default=4096, ge=1, description="residues per batch when computing example tracks"
    )
    device: str = Field(default="auto", description="auto (CUDA when available), cpu or cuda[:n]")
    residue_cache_gib: float = Field(
        default=2.0, ge=0, description="pooled-only layers' recomputed residues kept for reuse"
    )
    seed: int = 0
    map: MapConfig = Field(
        default_factory=MapConfig, description="UMAP of the decoder directions (feature map)"
    )

    def result_inputs(self) -> dict[str, Any]:
        """The fields that shape the analysis (batch sizes, device and cache change only speed
        and memory): what a finished analysis's stamp records."""
        return self.model_dump(mode="json", exclude=SPEED_ONLY_FIELDS)


@dataclass
class Spec:
    """What analyze needs to know of a dictionary."""

    name: str
    level: str  # protein | residue
    layer: int


def _example_structures(
    examples: list[tuple[int, int, str, int, float]], covered: PairCoverage
) -> dict[str, Any]:
    """Per example, the structures.json row of the chain that shows it best (-1: the protein has
    none), that chain's share of the activation mass (NaN: none) and whether it resolves the
    peak residue."""
    where = covered.index()
    rows = np.array([where.get((f, p), -1) for f, p, *_ in examples], dtype=np.int64)
    has = rows >= 0
    if not has.any():
        nan = np.full(rows.size, np.nan, np.float32)
        return {"structure": rows, "structure_share": nan, "structure_peak_covered": has}
    chain = np.where(has, covered.chain[rows], -1)  # rows of -1 read a row that is discarded
    share = np.where(has, covered.activation_share[rows], np.nan).astype(np.float32)
    peak = has & covered.peak_covered[rows]
    return {"structure": chain, "structure_share": share, "structure_peak_covered": peak}


def _pack(arrays: Iterator[FloatArray]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float16]]:
    chunks = list(arrays)
    offsets = np.zeros(len(chunks) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(c) for c in chunks])
    values = np.concatenate(chunks).astype(np.float16) if chunks else np.zeros(0, np.float16)
    return offsets, values


def run_analyze(
    workdir: Path,
    module: Dictionary,
    spec: Spec,
    store: EmbeddingStore,
    chains: dict[int, list[Chain]],
    cfg: AnalyzeConfig,
    residue_source: ResidueSource | None = None,
    inputs: Mapping[str, Any] | None = None,
    engine: Engine | None = None,
    sequences: Sequence[str] | None = None,
) -> Path:
    """Analyze one dictionary into ``analysis/{name}/`` (skipped when already DONE).

    ``chains``: the structure chains of each protein that has any
    (``trainer.structure_coverage.chains_by_protein``).
    ``residue_source`` gives the example proteins' residues when ``spec.layer`` was embedded
    pooled-only (protein-level dictionaries), and every residue the store does not hold when its
    residue layers store a sample of the proteins (``trainer.residue_replay``); it must come from
    the model the store was made with.
    ``inputs``: what the analysis depends on (``trainer.stage_driver``): DONE must hold their
    stamp, and an analysis of other inputs is deleted and made again. ``engine`` runs the per-shard
    encoding pass of residue-level dictionaries (default: in this process). ``sequences``
    (corpus order): with them, each feature's amino-acid profile is written too
    (``trainer.aa_profile``).
    """
    files = RunLayout(workdir).analysis(spec.name)
    unit = StageUnit(f"analyze: {spec.name}", files.done, dict(inputs or {}),
                     outputs=(files.protein_activations, files.features, files.summary))  # fmt: skip

    def analyze() -> None:
        _analyze(files, module, spec, store, chains, cfg, residue_source, engine, sequences)

    # Other inputs, or interrupted: the folder goes, so no stale file stays.
    run_unit(unit, analyze, load=lambda: None, clear=files.dir)
    return files.dir


def _analyze(
    files: AnalysisFiles,
    module: Dictionary,
    spec: Spec,
    store: EmbeddingStore,
    chains: dict[int, list[Chain]],
    cfg: AnalyzeConfig,
    residue_source: ResidueSource | None,
    engine: Engine | None,
    sequences: Sequence[str] | None,
) -> None:
    """Every file of ``analysis/{name}/`` but its DONE (the driver writes that)."""
    started = time.perf_counter()
    files.dir.mkdir(parents=True, exist_ok=True)
    module = module.to(resolve_device(cfg.device)).eval()
    one_pass = spec.level == "residue" and has_fve(module)
    fve = np.full(store.n_proteins, np.nan, dtype=np.float32) if one_pass else None
    residue_mass = None
    if sequences is not None and spec.level == "residue":
        residue_mass = AaMass(sequences, module.n_latents, device_of(module))
    acts, residue_active, n_residues = protein_activations(
        module, spec, store, cfg, fve, engine, residue_mass, residue_source
    )
    with atomic_file(files.protein_activations) as handle:
        sp.save_npz(handle, acts)
    stats = feature_stats(acts, cfg, residue_active, float(n_residues[0]))
    FeatureStats(**stats).save(files.features)

    covered = structure_coverage(module, spec, store, acts, chains, cfg, residue_source)
    examples = select_examples(acts, covered, cfg)
    # Per protein, its most active features (protein page).
    top_rows = protein_top_features(acts, cfg.protein_top_features)
    # Per-residue values, computed once per protein for every feature that needs them there.
    wanted: dict[int, set[int]] = {}
    for f, p, *_ in examples:
        wanted.setdefault(p, set()).add(f)
    # Residue tracks on the protein page for proteins shown anywhere (examples, structures);
    # the rest keep their activations only, so memory stays bounded on a full corpus.
    shown = set(wanted) | set(chains)
    for p, f, *_ in top_rows:
        if p in shown:
            wanted.setdefault(p, set()).add(f)
    values = residue_tracks(module, spec, store, {p: sorted(f) for p, f in wanted.items()},
                            cfg.max_residues_per_track_batch, residue_source,
                            cfg.max_residues_per_batch)  # fmt: skip
    profile: AaProfile | None = None
    if residue_mass is not None:
        profile = residue_mass.result()
    elif sequences is not None:  # protein level: the example proteins' exact attribution
        pairs = ((f, p) for f, p, *_ in examples)
        profile = profile_from_tracks(values, pairs, sequences, module.n_latents)
    if profile is not None:
        profile.save(files.aa_profile)
    ex_offsets, ex_values = _pack(values[(f, p)] for f, p, *_ in examples)
    max_position = np.array([int(np.argmax(values[(f, p)])) for f, p, *_ in examples], np.int64)
    Examples(
        feature=np.array([e[0] for e in examples], np.int64),
        protein=np.array([e[1] for e in examples], np.int64),
        bin=np.array([e[2] for e in examples], dtype="U16"),
        rank=np.array([e[3] for e in examples], np.int64),
        activation=np.array([e[4] for e in examples], np.float32),
        max_position=max_position,
        offsets=ex_offsets,
        values=ex_values,
        **_example_structures(examples, covered),
    ).save(files.examples)
    empty = np.zeros(0, dtype=np.float32)
    pt_offsets, pt_values = _pack(values.get((f, p), empty) for p, f, *_ in top_rows)
    ProteinTop(
        protein=np.array([t[0] for t in top_rows], np.int64),
        feature=np.array([t[1] for t in top_rows], np.int64),
        rank=np.array([t[2] for t in top_rows], np.int64),
        activation=np.array([t[3] for t in top_rows], np.float32),
        offsets=pt_offsets,
        values=pt_values,
    ).save(files.protein_top)
    # Neurons are the basis itself: every pair is orthogonal (cosine 0), so no neighbours.
    nb_idx, nb_cos = decoder_neighbors(module, 0 if module.kind == "neurons" else cfg.n_neighbors)
    Neighbors(indices=nb_idx, cosines=nb_cos).save(files.neighbors)
    if cfg.map.enabled and module.kind != "neurons":  # the basis has no geometry to map
        directions = module.decoder_directions().float().cpu().numpy()
        xy = feature_map(directions, ~stats["is_dead"], cfg.map, cfg.seed)
        FeatureMap(xy=xy).save(files.feature_map)
    if not one_pass:
        fve = per_protein_fve(module, spec, store, cfg)
    summary = {
        "fve_median": float(np.nanmedian(fve)) if fve is not None else None,
        "fve_p05": float(np.nanpercentile(fve, 5)) if fve is not None else None,
        "n_proteins": int(acts.shape[0]),
        "n_latents": int(acts.shape[1]),
        "n_dead": int(stats["is_dead"].sum()),
        "n_examples": len(examples),
        "bin_edges": np.linspace(0.0, 1.0, cfg.n_bins + 1).tolist(),
        "mean_l0_protein": float(acts.getnnz() / max(acts.shape[0], 1)),
        "seconds": round(time.perf_counter() - started, 2),
    }
    if profile is not None:
        summary["aa_profile"] = profile.summary()
    # the document publish, the summary and the app read
    write_atomic(files.summary, AnalysisSummaryDoc.model_validate(summary).to_json())
