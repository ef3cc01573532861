"""Per-residue values of chosen features on chosen proteins, and what structures show of them.

Residue level: the feature's activation at each residue; protein level: the exact per-residue
attribution of the pooled pre-activation. Only the proteins asked for are read (from the shards,
or from a ``residue_source`` where they are not stored), in shard order and residue-budgeted
batches, and only the wanted columns come back to the host, so example tracks stay cheap on a
full corpus.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from app.sae import Dictionary
from trainer.embedding_store import EmbeddingStore, ResidueSource
from trainer.protein_activations import FloatArray, device_of, to_device
from trainer.structure_coverage import Chain, PairCoverage, collect

if TYPE_CHECKING:
    from trainer.analyze import AnalyzeConfig, Spec


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
    device = device_of(module)
    ordered = sorted(proteins, key=store.location)
    sizes = [int(store.lengths[p]) for p in ordered]
    batches = [ordered[a:b] for a, b in _groups(sizes, max_residues)]
    residues = _batch_residues(store, spec.layer, batches, residue_source, fetch_residues)
    for batch, x_host in zip(batches, residues, strict=True):
        lengths = store.lengths[batch]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        x = to_device(x_host, device)
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
