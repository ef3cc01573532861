"""Analyze: encode every protein with a dictionary and summarise each feature.

For every feature: activation density, max, mean, a histogram; the top proteins overall, per
activation-quantile bin (like InterPLM/InterProt) and among proteins with a structure, each with
per-residue values (residue level: the feature's activation at each residue; protein level: the
exact per-residue attribution of the pooled pre-activation); decoder-cosine neighbours; and per
protein its most active features. A protein-level dictionary of a layer embedded pooled-only gets
its example proteins' residues from a ``residue_source`` (the caller's model; analyze loads none). Everything is written under ``analysis/{name}/`` as ``.npz``
files, the ``DONE`` marker last.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
from pydantic import BaseModel, Field
from torch import Tensor
from tqdm import tqdm

from app.atomic_write import atomic_file, write_atomic
from app.esm import resolve_device
from app.sae import Dictionary, SparseDictionary
from app.stage_summaries import AnalysisSummaryDoc
from trainer.aa_profile import AaMass, AaProfile, profile_from_tracks
from trainer.analysis_files import Examples, FeatureMap, FeatureStats, Neighbors, ProteinTop
from trainer.embed import EmbeddingStore, ResidueSource
from trainer.engines import Engine
from trainer.feature_map import MapConfig, feature_map
from trainer.layout import AnalysisFiles, RunLayout
from trainer.stage_driver import StageUnit, run_unit
from trainer.structure_coverage import Chain, PairCoverage, collect

FloatArray = npt.NDArray[np.float32]


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


def _device_of(module: Dictionary) -> torch.device:
    """Where the module's tensors are: its weights, or the neuron baseline's empty buffer
    (weightless, it ran on the CPU beside a GPU: 110 s for the 31.7 M residues of the full
    corpus on an H200 machine's 16 cores, against 43-64 s for the residue SAEs on the GPU)."""
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _to(a: np.ndarray, device: torch.device) -> Tensor:
    """float32 tensor on ``device``; on CUDA through pinned memory, the copy asynchronous."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def _nonzero(
    module: Dictionary, x: Tensor, batch: int, recon_out: list[Tensor] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Latents of ``x [N, d_in]`` as (rows, columns, values) of the non-zero entries, row-major,
    on ``x``'s device; encoded ``batch`` rows at a time so the dense latents stay small.
    With ``recon_out`` (SAEs), each batch's reconstruction is appended there from the same
    forward, so the FVE needs no second encode."""
    rows, cols, vals = [], [], []
    for start in range(0, x.shape[0], batch):
        if recon_out is None:
            z = module.encode(x[start : start + batch])
        else:
            recon, z = module(x[start : start + batch])
            recon_out.append(recon)
        r, c = z.nonzero(as_tuple=True)
        rows.append(r + start)
        cols.append(c)
        vals.append(z[r, c].float())
    if not rows:
        empty = torch.zeros(0, dtype=torch.long, device=x.device)
        return empty, empty, torch.zeros(0, device=x.device)
    return torch.cat(rows), torch.cat(cols), torch.cat(vals)


def _csr(rows: Tensor, cols: Tensor, vals: Tensor, shape: tuple[int, int]) -> sp.csr_matrix:
    """CSR from row-major sorted non-zero entries (one copy to the host)."""
    r, c, v = rows.cpu().numpy(), cols.cpu().numpy(), vals.cpu().numpy().astype(np.float32)
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=shape[0]), out=indptr[1:])
    return sp.csr_matrix((v, c.astype(np.int64), indptr), shape=shape)


def _encode(module: Dictionary, x: FloatArray, batch: int) -> sp.csr_matrix:
    """Sparse latents of ``x`` [N, d_in] -> CSR [N, n_latents] (float32)."""
    with torch.inference_mode():
        t = _to(x, _device_of(module))
        return _csr(*_nonzero(module, t, batch), (x.shape[0], module.n_latents))


def _owners(offsets: np.ndarray, device: torch.device) -> Tensor:
    """Residue -> index of its protein within a batch, from the batch's ``offsets``."""
    lengths = torch.from_numpy(np.diff(offsets).astype(np.int64)).to(device)
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)


@dataclass
class _ShardActivations:
    """One shard's pass: per batch its proteins, their max activations and FVEs."""

    proteins: list[np.ndarray]
    rows: list[sp.csr_matrix]
    fve: list[np.ndarray]
    residue_active: npt.NDArray[np.int64]
    n_residues: int
    aa: tuple[np.ndarray, np.ndarray] | None = None  # activation mass per residue type, residues


@dataclass
class _ShardPass:
    """A residue-level dictionary's encoding pass, one unit per embedding shard (an engine may
    run the units in other processes: pickled, the module travels on the CPU and lands on the
    device ``cfg.device`` names there)."""

    module: Dictionary
    spec: Spec
    store: EmbeddingStore
    cfg: AnalyzeConfig
    with_fve: bool
    sequences: Sequence[str] | None = None  # with them, the amino-acid mass (trainer.aa_profile)
    source: ResidueSource | None = None  # residues of proteins outside a stored residue sample

    def __getstate__(self) -> dict[str, Any]:
        on_cpu = _device_of(self.module).type == "cpu"
        return {
            **self.__dict__,
            "module": self.module if on_cpu else copy.deepcopy(self.module).cpu(),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.module = self.module.to(resolve_device(self.cfg.device)).eval()

    def run(self, k: int) -> _ShardActivations:
        module, n_latents = self.module, self.module.n_latents
        device = _device_of(module)
        residue_active = torch.zeros(n_latents, dtype=torch.long, device=device)
        out = _ShardActivations([], [], [], np.zeros(0, dtype=np.int64), 0)
        batches = self.store.iter_shard_residue_batches(
            self.spec.layer, k, self.cfg.max_residues_per_batch, self.source
        )
        mass = None if self.sequences is None else AaMass(self.sequences, n_latents, device)
        with torch.inference_mode():
            for protein_indices, offsets, residues in batches:
                x = _to(residues, device)
                recon: list[Tensor] | None = [] if self.with_fve else None
                r, c, v = _nonzero(module, x, self.cfg.batch_size, recon)
                if recon is not None:
                    out.fve.append(_fve(x, torch.cat(recon), offsets).cpu().numpy())
                out.n_residues += residues.shape[0]
                residue_active += torch.bincount(c, minlength=n_latents)
                if mass is not None:
                    mass.add(protein_indices, np.diff(offsets), r, c, v)
                # One key per (protein, feature); unique() sorts them: the result is row-major.
                keys, inverse = torch.unique(
                    _owners(offsets, device)[r] * n_latents + c, return_inverse=True
                )
                maxima = torch.zeros(len(keys), device=device).scatter_reduce_(
                    0, inverse, v, "amax"
                )
                shape = (len(protein_indices), n_latents)
                out.rows.append(_csr(keys // n_latents, keys % n_latents, maxima, shape))
                out.proteins.append(np.asarray(protein_indices, dtype=np.int64))
        out.residue_active = residue_active.cpu().numpy()
        out.aa = None if mass is None else mass.arrays()
        return out


def protein_activations(
    module: Dictionary,
    spec: Spec,
    store: EmbeddingStore,
    cfg: AnalyzeConfig,
    fve_out: FloatArray | None = None,
    engine: Engine | None = None,
    aa_out: AaMass | None = None,
    residue_source: ResidueSource | None = None,
) -> tuple[sp.csr_matrix, npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Per-protein activations [n_proteins, n_latents] and residue-level firing counts.

    Protein level: the encoded pooled vector. Residue level: the max over the protein's residues
    (a scatter-max over the non-zero latents, on the module's device), one unit per embedding
    shard on ``engine`` (default: in this process, in order).
    Also returns, per feature, the number of residues it fires on and the total residue count
    (residue-level density), zeros for protein-level dictionaries.
    ``fve_out [n_proteins]`` (residue-level SAEs): filled with each protein's FVE from the same
    pass, so the shards are read and encoded once, not twice. ``aa_out`` (residue level): each
    batch's activation mass per residue type is added there, from the same pass.
    ``residue_source``: the residues of proteins outside the store's residue sample
    (``trainer.residue_replay``), in the same batches as stored ones.
    """
    n_latents = module.n_latents
    if spec.level == "protein":
        pooled = store.pooled(spec.layer)
        acts = _encode(module, pooled, cfg.batch_size)
        return acts, np.zeros(n_latents, dtype=np.int64), np.zeros(1)
    if engine is None:
        from trainer.engines.local import LocalEngine

        engine = LocalEngine()
    job = _ShardPass(module, spec, store, cfg, fve_out is not None,
                     aa_out.sequences if aa_out is not None else None, residue_source)  # fmt: skip
    parts: dict[int, _ShardActivations] = {}
    units = list(range(store.n_shards))
    for k, part in tqdm(engine.map_units(_ShardPass.run, job, units, gpu=True),
                        total=len(units), desc=f"encode {spec.name}", unit="shard"):  # fmt: skip
        if isinstance(part, BaseException):
            raise RuntimeError(f"analyze {spec.name}: shard {k} failed: {part}") from part
        parts[k] = part
    ordered = [parts[k] for k in units]  # units finish in any order; shards are summed in order
    residue_active = np.zeros(n_latents, dtype=np.int64)
    for part in ordered:
        residue_active += part.residue_active
        if aa_out is not None and part.aa is not None:
            aa_out.merge(*part.aa)
    order = [proteins for part in ordered for proteins in part.proteins]
    if fve_out is not None:
        for proteins, fve in zip(order, (f for part in ordered for f in part.fve), strict=True):
            fve_out[proteins] = fve
    stacked = sp.vstack([row for part in ordered for row in part.rows], format="csr")
    stacked = stacked.astype(np.float32)
    # Row r of ``stacked`` is protein order[r]: put every protein back on its corpus row.
    position = np.empty(store.n_proteins, dtype=np.int64)
    position[np.concatenate(order)] = np.arange(stacked.shape[0])
    acts = stacked[position]
    n_residues = sum(part.n_residues for part in ordered)
    return acts, residue_active, np.array([float(n_residues)])


def _fve(x: Tensor, recon: Tensor, offsets: np.ndarray) -> Tensor:
    """``app.sae.sequence_fve`` of every protein of a batch at once (float64).

    ``x``/``recon`` [n_res, d] hold the proteins' residues back to back (``offsets``); a
    one-residue protein is centred over its dimensions, a longer one over its residues.
    """
    x64, r64 = x.double(), recon.double()
    owner = _owners(offsets, x.device)
    n_proteins = len(offsets) - 1
    lengths = torch.from_numpy(np.diff(offsets)).to(x.device).double()
    sums = torch.zeros(n_proteins, x.shape[1], dtype=torch.float64, device=x.device)
    centre = (sums.index_add_(0, owner, x64) / lengths[:, None])[owner]
    single = (lengths == 1)[owner]
    centre = torch.where(single[:, None], x64.mean(dim=1, keepdim=True), centre)
    per_protein = torch.zeros(n_proteins, dtype=torch.float64, device=x.device)
    sst = per_protein.index_add(0, owner, (x64 - centre).pow(2).sum(dim=1))
    sse = per_protein.index_add(0, owner, (x64 - r64).pow(2).sum(dim=1))
    return torch.where(sst > 0, 1.0 - sse / sst, torch.nan)


def _has_fve(module: Dictionary) -> bool:
    """SAEs reconstruct their own input; transcoders (another target) and neurons do not."""
    return isinstance(module, SparseDictionary) and not module.is_transcoder


def per_protein_fve(
    module: Dictionary, spec: Spec, store: EmbeddingStore, cfg: AnalyzeConfig
) -> FloatArray | None:
    """Each protein's reconstruction FVE (``app.sae.sequence_fve``), for SAEs only.

    The server compares a pasted sequence's FVE with this distribution to warn when the input
    is out of distribution. Transcoders (another target) and raw neurons have none.
    """
    if not _has_fve(module):
        return None
    device = _device_of(module)
    out = np.full(store.n_proteins, np.nan, dtype=np.float32)
    with torch.inference_mode():
        if spec.level == "protein":
            pooled = store.pooled(spec.layer)
            for start in range(0, pooled.shape[0], cfg.batch_size):
                x = _to(pooled[start : start + cfg.batch_size], device)
                recon, _ = module(x)
                each = np.arange(x.shape[0] + 1)  # every pooled vector is its own "sequence"
                out[start : start + x.shape[0]] = _fve(x, recon, each).cpu().numpy()
            return out
    protein_activations(module, spec, store, cfg, fve_out=out)  # residue level: one pass
    return out


def feature_stats(
    acts: sp.csr_matrix,
    cfg: AnalyzeConfig,
    residue_active: npt.NDArray[np.int64],
    n_residues: float,
) -> dict[str, Any]:
    """Density, max, mean over active, histogram per feature (columns of ``acts``).

    All features at once: each stored value carries its column, and the histogram bins are
    those of ``np.histogram(values, n_hist_bins, range=(0, max))`` per feature.
    """
    csc = acts.tocsc()
    csc.sort_indices()
    n_proteins, n_latents = acts.shape
    n_bins = cfg.n_hist_bins
    n_active = np.diff(csc.indptr).astype(np.int64)
    column = np.repeat(np.arange(n_latents), n_active)
    positive = csc.data > 0
    values, column = csc.data[positive].astype(np.float32), column[positive]
    count = np.bincount(column, minlength=n_latents)
    max_act = np.zeros(n_latents, dtype=np.float32)
    np.maximum.at(max_act, column, values)
    total = np.bincount(column, weights=values.astype(np.float64), minlength=n_latents)
    mean_act = (total / np.maximum(count, 1)).astype(np.float32)
    # A zero stop anywhere would switch linspace to another rounding for every row: dead
    # features get stop 1 here and zero edges afterwards, as np.histogram is never run on them.
    stops = np.where(count > 0, max_act, 1.0).astype(np.float64)
    hist_edges = np.linspace(0.0, stops, n_bins + 1, axis=1).astype(np.float32)
    hist_edges[count == 0] = 0.0
    # np.histogram's uniform-bin rule: floor((v - lo) · n / (hi - lo)), the top edge in the last
    # bin, then one step down/up where the float32 edges disagree with the float64 estimate.
    per_unit = n_bins / stops
    bins = (values.astype(np.float64) * per_unit[column]).astype(np.intp)
    bins[bins == n_bins] -= 1
    bins[values < hist_edges[column, bins]] -= 1
    bins[(values >= hist_edges[column, bins + 1]) & (bins != n_bins - 1)] += 1
    hist_counts = np.bincount(column * n_bins + bins, minlength=n_latents * n_bins)
    hist_counts = hist_counts.reshape(n_latents, n_bins).astype(np.int64)
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
    acts: sp.csr_matrix, covered: PairCoverage, cfg: AnalyzeConfig
) -> list[tuple[int, int, str, int, float]]:
    """(feature, protein, bin, rank, activation) for the top, quantile-bin and structure groups.

    Bins are equal-width in max-normalised activation: q1 = (0, 1/n], ..., qn = ((n-1)/n, 1];
    proteins already in the top group are not sampled again in a quantile bin. The loop over
    features stays: each bin's draw comes from one seeded generator, in feature order.
    The structure group ranks the proteins with a chain by what their best chain shows
    (``covered``): the peak residue resolved first, then the activation mass on resolved
    residues, then the protein's activation.
    """
    rng = np.random.default_rng(cfg.seed)
    structure_rows = _structure_candidates(covered, acts.shape[1])
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
        taken = np.zeros(proteins.size, dtype=bool)
        taken[top] = True
        normalised = values / values.max()
        edges = np.linspace(0.0, 1.0, cfg.n_bins + 1)
        for b in range(cfg.n_bins):
            in_bin = np.flatnonzero((normalised > edges[b]) & (normalised <= edges[b + 1]) & ~taken)
            if in_bin.size == 0 or cfg.per_bin == 0:
                continue
            chosen = rng.choice(in_bin, size=min(cfg.per_bin, in_bin.size), replace=False)
            chosen = chosen[np.argsort(-values[chosen], kind="stable")]
            out.extend(
                (f, int(proteins[i]), f"q{b + 1}", r, float(values[i]))
                for r, i in enumerate(chosen)
            )
        rows = structure_rows[f]
        if rows.size == 0 or cfg.n_structure == 0:
            continue
        activation = dict(zip(proteins.tolist(), values.tolist(), strict=True))
        cand = covered.protein[rows].tolist()
        key = [(-int(covered.peak_covered[r]), -float(covered.covered_mass[r]), -activation[p], p)
               for r, p in zip(rows.tolist(), cand, strict=True)]  # fmt: skip
        ranked = [cand[i] for i in sorted(range(len(cand)), key=key.__getitem__)]
        out.extend(
            (f, p, "structure", r, float(activation[p]))
            for r, p in enumerate(ranked[: cfg.n_structure])
        )
    return out


def _structure_candidates(covered: PairCoverage, n_latents: int) -> list[npt.NDArray[np.int64]]:
    """Per feature, the rows of ``covered`` that are its (protein, best chain) pairs."""
    order = np.argsort(covered.feature, kind="stable")
    bounds = np.searchsorted(covered.feature[order], np.arange(n_latents + 1))
    return [order[a:b] for a, b in itertools.pairwise(bounds.tolist())]


def residue_values(
    module: Dictionary,
    spec: Spec,
    store: EmbeddingStore,
    protein: int,
    features: list[int],
    residue_source: ResidueSource | None = None,
) -> dict[int, FloatArray]:
    """Per-residue values of ``features`` on one protein (see module docstring)."""
    tracks = residue_tracks(module, spec, store, {protein: features}, residue_source=residue_source)
    return {f: tracks[(f, protein)] for f in features}


def _per_residue(module: Dictionary, spec: Spec, x: Tensor, lengths: Tensor) -> Tensor:
    """``[n_res, n_latents]``: latents (residue level) or pooled attribution (protein level)."""
    if spec.level == "residue":
        return module.encode(x)
    return module.residue_attribution(x, lengths=lengths)


def _groups(sizes: list[int], limit: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` runs of items whose sizes add up to ≤ ``limit`` (or one)."""
    runs, start = [], 0
    while start < len(sizes):
        stop, total = start + 1, sizes[start]
        while stop < len(sizes) and total + sizes[stop] <= limit:
            total += sizes[stop]
            stop += 1
        runs.append((start, stop))
        start = stop
    return runs


def _batch_residues(
    store: EmbeddingStore,
    layer: int,
    batches: list[list[int]],
    source: ResidueSource | None,
    fetch_residues: int,
) -> Iterator[np.ndarray]:
    """float32 [sum of lengths, d] per batch: its proteins' residues back to back.

    From the shards; for a pooled-only layer, or proteins outside a stored residue sample, from
    ``source``, asked for several batches at once (≤ ``fetch_residues`` residues) so the
    language model runs on large batches (and a replayed batch serves all its proteins).
    """
    if source is None or (store.has_residues(layer) and not store.residue_sampled):
        for batch in batches:
            yield np.concatenate([store.residues(layer, p) for p in batch])
        return
    sizes = [int(store.lengths[batch].sum()) for batch in batches]
    for start, stop in _groups(sizes, fetch_residues):
        group = [p for batch in batches[start:stop] for p in batch]
        if store.has_residues(layer):  # a residue sample: the stored ones from the shards
            stacked = store.residues_of(layer, group, source)
        else:
            stacked = source(layer, group)
        yield from np.split(stacked, np.cumsum(sizes[start:stop])[:-1])


def _encoded_batches(
    module: Dictionary,
    spec: Spec,
    store: EmbeddingStore,
    proteins: list[int],
    max_residues: int,
    residue_source: ResidueSource | None,
    fetch_residues: int,
) -> Iterator[tuple[list[int], np.ndarray, Tensor]]:
    """(proteins, their offsets, per-residue values ``[n_res, n_latents]`` on the module's
    device) per batch of ≤ ``max_residues`` residues (a longer protein alone), in shard order.
    Run it under ``torch.inference_mode()``."""
    device = _device_of(module)
    ordered = sorted(proteins, key=store.location)
    sizes = [int(store.lengths[p]) for p in ordered]
    batches = [ordered[a:b] for a, b in _groups(sizes, max_residues)]
    residues = _batch_residues(store, spec.layer, batches, residue_source, fetch_residues)
    for batch, x_host in zip(batches, residues, strict=True):
        lengths = store.lengths[batch]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        x = _to(x_host, device)
        yield batch, offsets, _per_residue(module, spec, x, torch.from_numpy(lengths).to(device))


def residue_tracks(
    module: Dictionary,
    spec: Spec,
    store: EmbeddingStore,
    wanted: dict[int, list[int]],
    max_residues: int = 4096,
    residue_source: ResidueSource | None = None,
    fetch_residues: int = 65_536,
) -> dict[tuple[int, int], FloatArray]:
    """Per-residue values of each ``wanted[protein]`` feature, keyed ``(feature, protein)``.

    Proteins go through the module a batch of ≤ ``max_residues`` residues at a time (a longer
    protein alone), in shard order, and only the wanted columns come back to the host. Residues
    come from the shards, or from ``residue_source`` where the layer was stored pooled-only
    (≤ ``fetch_residues`` per call).
    """
    out: dict[tuple[int, int], FloatArray] = {}
    batches = _encoded_batches(module, spec, store, list(wanted), max_residues, residue_source,
                               fetch_residues)  # fmt: skip
    with torch.inference_mode():
        for batch, offsets, values in batches:
            _gather_tracks(wanted, batch, offsets, values, out)
    return out


def _gather_tracks(
    wanted: dict[int, list[int]],
    batch: list[int],
    offsets: np.ndarray,
    values: Tensor,
    out: dict[tuple[int, int], FloatArray],
) -> None:
    """One batch's wanted ``(feature, protein)`` tracks into ``out``."""
    device = values.device
    lengths = np.diff(offsets)
    # Gather (residue, feature) for every wanted pair at once, then cut per pair.
    feats = [np.asarray(wanted[p], dtype=np.int64) for p in batch]
    n_feats = np.array([len(f) for f in feats])
    pair_len = np.repeat(lengths, n_feats)
    pair_start = np.repeat(offsets[:-1], n_feats)
    within = np.arange(pair_len.sum()) - np.repeat(np.cumsum(pair_len) - pair_len, pair_len)
    rows = np.repeat(pair_start, pair_len) + within
    cols = np.repeat(np.concatenate(feats), pair_len)
    picked = values[torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)]
    pieces = np.split(picked.float().cpu().numpy(), np.cumsum(pair_len)[:-1])
    pairs = [(int(f), p) for p, fs in zip(batch, feats, strict=True) for f in fs]
    out.update(zip(pairs, pieces, strict=True))


def structure_coverage(
    module: Dictionary,
    spec: Spec,
    store: EmbeddingStore,
    acts: sp.csr_matrix,
    chains: dict[int, list[Chain]],
    cfg: AnalyzeConfig,
    residue_source: ResidueSource | None = None,
) -> PairCoverage:
    """For every feature active on a protein with a structure chain: the chain that shows it
    best and what it shows (``trainer.structure_coverage``); one pass over those proteins."""

    def per_protein() -> Iterator[tuple[int, Tensor]]:
        batches = _encoded_batches(module, spec, store, sorted(chains),
                                   cfg.max_residues_per_track_batch, residue_source,
                                   cfg.max_residues_per_batch)  # fmt: skip
        for batch, offsets, values in batches:
            for i, protein in enumerate(batch):
                yield protein, values[int(offsets[i]) : int(offsets[i + 1])]

    with torch.inference_mode():
        return collect(per_protein(), acts, chains)


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
        rows = torch.arange(sims.shape[0], device=sims.device)
        sims[rows, rows + start] = -2.0  # never your own neighbour
        top = torch.topk(sims, k, dim=1)
        indices[start : start + block] = top.indices.cpu().numpy()
        cosines[start : start + block] = top.values.cpu().numpy()
    return indices, cosines


def protein_top_features(acts: sp.csr_matrix, k: int) -> list[tuple[int, int, int, float]]:
    """(protein, feature, rank, activation): each protein's ``k`` most active features, ties in
    feature order, for all proteins at once (one sort of the stored values)."""
    csr = acts.tocsr()
    csr.sort_indices()
    row = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    order = np.lexsort((-csr.data, row))  # by protein, then activation descending (stable)
    rank = np.arange(len(order)) - csr.indptr[row[order]]
    keep = order[rank < k]
    return list(zip(row[keep].tolist(), csr.indices[keep].tolist(),
                    rank[rank < k].tolist(), csr.data[keep].astype(float).tolist(), strict=True))  # fmt: skip


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
    one_pass = spec.level == "residue" and _has_fve(module)
    fve = np.full(store.n_proteins, np.nan, dtype=np.float32) if one_pass else None
    residue_mass = None
    if sequences is not None and spec.level == "residue":
        residue_mass = AaMass(sequences, module.n_latents, _device_of(module))
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
