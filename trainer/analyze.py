"""Analyze: encode every protein with a dictionary and summarise each feature.

For every feature: activation density, max, mean, a histogram; the top proteins overall, per
activation-quantile bin (like InterPLM/InterProt) and among proteins with a structure, each with
per-residue values (residue level: the feature's activation at each residue; protein level: the
exact per-residue attribution of the pooled pre-activation); decoder-cosine neighbours; and per
protein its most active features. Everything is written under ``analysis/{name}/`` as ``.npz``
files, the ``DONE`` marker last.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
from pydantic import BaseModel, Field
from tqdm import tqdm

from app.sae import Dictionary, SparseDictionary, sequence_fve
from trainer.embed import EmbeddingStore

FloatArray = npt.NDArray[np.float32]


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
    seed: int = 0


@dataclass
class Spec:
    """What analyze needs to know of a dictionary."""

    name: str
    level: str  # protein | residue
    layer: int


def _encode(module: Dictionary, x: FloatArray, batch: int) -> sp.csr_matrix:
    """Sparse latents of ``x`` [N, d_in] -> CSR [N, n_latents] (float32)."""
    blocks = []
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch):
            z = module.encode(torch.from_numpy(np.ascontiguousarray(x[start : start + batch])))
            blocks.append(sp.csr_matrix(z.float().numpy()))
    if not blocks:
        return sp.csr_matrix((0, module.n_latents), dtype=np.float32)
    return sp.vstack(blocks, format="csr").astype(np.float32)


def protein_activations(
    module: Dictionary, spec: Spec, store: EmbeddingStore, cfg: AnalyzeConfig
) -> tuple[sp.csr_matrix, npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Per-protein activations [n_proteins, n_latents] and residue-level firing counts.

    Protein level: the encoded pooled vector. Residue level: the max over the protein's residues.
    Also returns, per feature, the number of residues it fires on and the total residue count
    (residue-level density), zeros for protein-level dictionaries.
    """
    n_latents = module.n_latents
    residue_active = np.zeros(n_latents, dtype=np.int64)
    if spec.level == "protein":
        pooled = store.pooled(spec.layer)
        return _encode(module, pooled, cfg.batch_size), residue_active, np.zeros(1)
    rows: list[sp.csr_matrix] = []
    order: list[np.ndarray] = []  # batches come in shard order, not corpus order
    n_residues = 0
    batches = store.iter_residue_batches(spec.layer, cfg.max_residues_per_batch)
    for protein_indices, offsets, residues in tqdm(
        batches, desc=f"encode {spec.name}", unit="batch"
    ):
        z = _encode(module, residues, cfg.batch_size)
        n_residues += residues.shape[0]
        residue_active += np.bincount(z.indices, minlength=n_latents)
        dense_max = np.zeros((len(protein_indices), n_latents), dtype=np.float32)
        for j in range(len(protein_indices)):
            part = z[offsets[j] : offsets[j + 1]]
            if part.nnz:
                dense_max[j] = part.max(axis=0).toarray().ravel()
        rows.append(sp.csr_matrix(dense_max))
        order.append(np.asarray(protein_indices, dtype=np.int64))
    stacked = sp.vstack(rows, format="csr").astype(np.float32)
    # Row r of ``stacked`` is protein order[r]: put every protein back on its corpus row.
    position = np.empty(store.n_proteins, dtype=np.int64)
    position[np.concatenate(order)] = np.arange(stacked.shape[0])
    acts = stacked[position]
    return acts, residue_active, np.array([float(n_residues)])


def per_protein_fve(
    module: Dictionary, spec: Spec, store: EmbeddingStore, cfg: AnalyzeConfig
) -> FloatArray | None:
    """Each protein's reconstruction FVE (``app.sae.sequence_fve``), for SAEs only.

    The server compares a pasted sequence's FVE with this distribution to warn when the input
    is out of distribution. Transcoders (another target) and raw neurons have none.
    """
    if not isinstance(module, SparseDictionary) or module.is_transcoder:
        return None
    out = np.full(store.n_proteins, np.nan, dtype=np.float32)
    with torch.inference_mode():
        if spec.level == "protein":
            pooled = torch.from_numpy(np.ascontiguousarray(store.pooled(spec.layer)))
            for start in range(0, pooled.shape[0], cfg.batch_size):
                x = pooled[start : start + cfg.batch_size]
                recon, _ = module(x)
                for j in range(x.shape[0]):
                    out[start + j] = sequence_fve(x[j : j + 1], recon[j : j + 1])
            return out
        batches = store.iter_residue_batches(spec.layer, cfg.max_residues_per_batch)
        for protein_indices, offsets, residues in batches:
            x = torch.from_numpy(np.ascontiguousarray(residues))
            recon, _ = module(x)
            for j, p in enumerate(protein_indices):
                lo, hi = int(offsets[j]), int(offsets[j + 1])
                out[int(p)] = sequence_fve(x[lo:hi], recon[lo:hi])
    return out


def feature_stats(
    acts: sp.csr_matrix,
    cfg: AnalyzeConfig,
    residue_active: npt.NDArray[np.int64],
    n_residues: float,
) -> dict[str, Any]:
    """Density, max, mean over active, histogram per feature (columns of ``acts``)."""
    csc = acts.tocsc()
    n_proteins, n_latents = acts.shape
    n_active = np.diff(csc.indptr).astype(np.int64)
    max_act = np.zeros(n_latents, dtype=np.float32)
    mean_act = np.zeros(n_latents, dtype=np.float32)
    hist_counts = np.zeros((n_latents, cfg.n_hist_bins), dtype=np.int64)
    hist_edges = np.zeros((n_latents, cfg.n_hist_bins + 1), dtype=np.float32)
    for f in range(n_latents):
        values = csc.data[csc.indptr[f] : csc.indptr[f + 1]]
        values = values[values > 0]
        if values.size == 0:
            continue
        max_act[f] = values.max()
        mean_act[f] = values.mean()
        counts, edges = np.histogram(values, bins=cfg.n_hist_bins, range=(0.0, float(max_act[f])))
        hist_counts[f] = counts
        hist_edges[f] = edges
    density = n_active / max(n_proteins, 1)
    residue_density = residue_active / n_residues if n_residues > 0 else np.zeros(n_latents)
    return {
        "n_active": n_active,
        "density": density.astype(np.float64),
        "residue_density": residue_density.astype(np.float64),
        "max_activation": max_act,
        "mean_activation": mean_act,
        "hist_counts": hist_counts,
        "hist_edges": hist_edges,
        "is_dead": n_active == 0,
    }


def select_examples(
    acts: sp.csr_matrix, has_structure: npt.NDArray[np.bool_], cfg: AnalyzeConfig
) -> list[tuple[int, int, str, int, float]]:
    """(feature, protein, bin, rank, activation) for the top, quantile-bin and structure groups.

    Bins are equal-width in max-normalised activation: q1 = (0, 1/n], ..., qn = ((n-1)/n, 1];
    proteins already in the top group are not sampled again in a quantile bin.
    """
    rng = np.random.default_rng(cfg.seed)
    csc = acts.tocsc()
    out: list[tuple[int, int, str, int, float]] = []
    for f in range(acts.shape[1]):
        proteins = csc.indices[csc.indptr[f] : csc.indptr[f + 1]]
        values = csc.data[csc.indptr[f] : csc.indptr[f + 1]]
        keep = values > 0
        proteins, values = proteins[keep], values[keep]
        if proteins.size == 0:
            continue
        order = np.argsort(-values, kind="stable")
        top = order[: cfg.n_top]
        out.extend((f, int(proteins[i]), "top", r, float(values[i])) for r, i in enumerate(top))
        taken = set(top.tolist())
        normalised = values / values.max()
        edges = np.linspace(0.0, 1.0, cfg.n_bins + 1)
        for b in range(cfg.n_bins):
            in_bin = np.flatnonzero((normalised > edges[b]) & (normalised <= edges[b + 1]))
            in_bin = np.array([i for i in in_bin if i not in taken], dtype=np.int64)
            if in_bin.size == 0 or cfg.per_bin == 0:
                continue
            chosen = rng.choice(in_bin, size=min(cfg.per_bin, in_bin.size), replace=False)
            chosen = chosen[np.argsort(-values[chosen], kind="stable")]
            out.extend(
                (f, int(proteins[i]), f"q{b + 1}", r, float(values[i]))
                for r, i in enumerate(chosen)
            )
        with_structure = order[has_structure[proteins[order]]][: cfg.n_structure]
        out.extend(
            (f, int(proteins[i]), "structure", r, float(values[i]))
            for r, i in enumerate(with_structure)
        )
    return out


def residue_values(
    module: Dictionary, spec: Spec, store: EmbeddingStore, protein: int, features: list[int]
) -> dict[int, FloatArray]:
    """Per-residue values of ``features`` on one protein (see module docstring)."""
    residues = torch.from_numpy(np.ascontiguousarray(store.residues(spec.layer, protein)))
    with torch.inference_mode():
        if spec.level == "residue":
            per_residue = module.encode(residues)[:, features]
        else:
            per_residue = module.residue_attribution(residues)[:, features]
    values = per_residue.float().numpy().T
    return {f: values[j] for j, f in enumerate(features)}


def decoder_neighbors(
    module: Dictionary, n_neighbors: int, block: int = 4096
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """For every feature, the ``n_neighbors`` features with the most similar decoder direction."""
    with torch.inference_mode():
        directions = module.decoder_directions().float()
        directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = directions.shape[0]
    k = min(n_neighbors, n - 1)
    indices = np.zeros((n, max(k, 0)), dtype=np.int64)
    cosines = np.zeros((n, max(k, 0)), dtype=np.float32)
    if k <= 0:
        return indices, cosines
    for start in range(0, n, block):
        sims = directions[start : start + block] @ directions.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + start] = -2.0  # never your own neighbour
        top = torch.topk(sims, k, dim=1)
        indices[start : start + block] = top.indices.numpy()
        cosines[start : start + block] = top.values.numpy()
    return indices, cosines


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
    has_structure: npt.NDArray[np.bool_],
    cfg: AnalyzeConfig,
) -> Path:
    """Analyze one dictionary into ``analysis/{name}/`` (skipped when already DONE)."""
    out = workdir / "analysis" / spec.name
    if (out / "DONE").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    module.eval()
    acts, residue_active, n_residues = protein_activations(module, spec, store, cfg)
    sp.save_npz(out / "protein_activations.npz", acts)
    stats = feature_stats(acts, cfg, residue_active, float(n_residues[0]))
    np.savez_compressed(out / "features.npz", **stats)

    examples = select_examples(acts, has_structure, cfg)
    # Per protein, its most active features (protein page).
    k = cfg.protein_top_features
    top_rows: list[tuple[int, int, int, float]] = []
    for p in range(acts.shape[0]):
        row = acts.getrow(p)
        if row.nnz == 0:
            continue
        order = np.argsort(-row.data, kind="stable")[:k]
        top_rows.extend(
            (p, int(row.indices[i]), r, float(row.data[i])) for r, i in enumerate(order)
        )
    # Per-residue values, computed once per protein for every feature that needs them there.
    wanted: dict[int, set[int]] = {}
    for f, p, *_ in examples:
        wanted.setdefault(p, set()).add(f)
    # Residue tracks on the protein page for proteins shown anywhere (examples, structures);
    # the rest keep their activations only, so memory stays bounded on a full corpus.
    shown = set(wanted) | set(np.flatnonzero(has_structure).tolist())
    for p, f, *_ in top_rows:
        if p in shown:
            wanted.setdefault(p, set()).add(f)
    values: dict[tuple[int, int], FloatArray] = {}
    for p, feats in tqdm(sorted(wanted.items()), desc=f"residues {spec.name}", unit="protein"):
        for f, v in residue_values(module, spec, store, p, sorted(feats)).items():
            values[(f, p)] = v
    ex_offsets, ex_values = _pack(values[(f, p)] for f, p, *_ in examples)
    max_position = np.array([int(np.argmax(values[(f, p)])) for f, p, *_ in examples], np.int64)
    np.savez_compressed(
        out / "examples.npz",
        feature=np.array([e[0] for e in examples], np.int64),
        protein=np.array([e[1] for e in examples], np.int64),
        bin=np.array([e[2] for e in examples], dtype="U16"),
        rank=np.array([e[3] for e in examples], np.int64),
        activation=np.array([e[4] for e in examples], np.float32),
        max_position=max_position,
        offsets=ex_offsets,
        values=ex_values,
    )
    empty = np.zeros(0, dtype=np.float32)
    pt_offsets, pt_values = _pack(values.get((f, p), empty) for p, f, *_ in top_rows)
    np.savez_compressed(
        out / "protein_top.npz",
        protein=np.array([t[0] for t in top_rows], np.int64),
        feature=np.array([t[1] for t in top_rows], np.int64),
        rank=np.array([t[2] for t in top_rows], np.int64),
        activation=np.array([t[3] for t in top_rows], np.float32),
        offsets=pt_offsets,
        values=pt_values,
    )
    nb_idx, nb_cos = decoder_neighbors(module, cfg.n_neighbors)
    np.savez_compressed(out / "neighbors.npz", indices=nb_idx, cosines=nb_cos)
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
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "DONE").write_text("ok\n")
    return out
