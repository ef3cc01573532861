"""Residues the embed stage did not store, recomputed exactly as it computed them.

With ``embed.residue_proteins`` the shards store per-residue vectors for a seeded sample of the
proteins only, so disk is bounded by the sample, not the corpus. Analysis still encodes every
protein: :class:`ReplayedResidues` recomputes a protein's residues by running the forward batch
the embed stage ran it in (the shard's proteins, windows and token budget, from the manifest),
so on the same device the values equal what the shard would have stored, bit for bit, and an
analysis over a sampled store equals one over a full store. :func:`model_residue_source`
recomputes the residues of layers embedded pooled-only, which no shard stores (with the embed
stage's settings, equal to what it would have stored up to float16 rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.esm import LoadedModel, embed_concatenated, embed_selected
from trainer.embed import EmbeddingMismatchError, corpus_sha256
from trainer.embedding_store import EmbeddingStore, ResidueSource


@dataclass
class ReplayedResidues:
    """A ``ResidueSource``: ``(layer, corpus rows) -> float32 [sum of lengths, d]``.

    Picklable (an engine may ship it to other processes with the analysis unit). Each call
    runs, per shard, only the forward batches that hold a requested protein; memory holds the
    requested proteins' residues and one batch.
    """

    store: EmbeddingStore
    loaded: LoadedModel
    sequences: Sequence[str]

    def __post_init__(self) -> None:
        manifest = self.store.manifest
        if self.loaded.sha256 != manifest["model"]["sha256"]:
            raise EmbeddingMismatchError(
                f"{self.store.directory} was embedded with model sha256 "
                f"{manifest['model']['sha256']}, not {self.loaded.name} ({self.loaded.sha256})"
            )
        if corpus_sha256(self.sequences) != manifest["corpus_sha256"]:
            raise EmbeddingMismatchError(f"{self.store.directory} was embedded from another corpus")

    def __call__(self, layer: int, proteins: Sequence[int]) -> np.ndarray:
        if layer not in self.store.layers:
            raise KeyError(f"layer {layer} was not embedded (have {self.store.layers})")
        rows = np.asarray(proteins, dtype=np.int64)
        shard_of = np.array([self.store.location(int(p))[0] for p in rows], dtype=np.int64)
        pieces: dict[int, np.ndarray] = {}
        for k in np.unique(shard_of).tolist():
            pieces.update(self._shard(layer, k, rows[shard_of == k]))
        return np.concatenate([pieces[int(p)] for p in rows]).astype(np.float32, copy=False)

    def _shard(self, layer: int, k: int, proteins: np.ndarray) -> dict[int, np.ndarray]:
        """``{corpus row: residues}`` of ``proteins`` (all in shard ``k``), each computed in the
        embed stage's forward batch over shard ``k``'s length-sorted proteins."""
        manifest = self.store.manifest
        members = self.store.shard_proteins(k)
        positions = np.array([self.store.location(int(p))[1] for p in proteins], dtype=np.int64)
        offsets, stacked = embed_selected(
            self.loaded,
            [self.sequences[int(i)] for i in members],
            [layer],
            positions,
            max_tokens_per_batch=int(manifest["config"]["max_tokens_per_batch"]),
            dtype=self.store.dtype,
            stride=int(manifest["plan"]["window_stride"]),
        )
        chosen = np.unique(positions)
        values = stacked[layer]
        return {
            int(members[pos]): values[offsets[j] : offsets[j + 1]]
            for j, pos in enumerate(chosen.tolist())
        }


def model_residue_source(
    store: EmbeddingStore,
    loaded: LoadedModel,
    sequences: Sequence[str],
    *,
    cache_bytes: int = 0,
) -> ResidueSource:
    """Residues of any embedded layer computed with ``loaded``, as the shards would hold them.

    For layers stored pooled-only: the same model (checked by sha256), corpus, windows, batch
    size and dtype as the embed stage, so values equal the shards' up to float16 rounding of
    batch-dependent float noise. The forward stops at the requested layer.

    Several dictionaries on pooled-only layers show many of the same example proteins. With
    ``cache_bytes`` > 0 a protein's forward keeps every pooled-only layer (in the store's
    dtype) up to that budget, so one forward serves all those dictionaries; without, each
    call runs only as deep as it must.
    """
    manifest = store.manifest
    if loaded.sha256 != manifest["model"]["sha256"]:
        raise EmbeddingMismatchError(
            f"{store.directory} was embedded with model sha256 {manifest['model']['sha256']}, "
            f"not {loaded.name} ({loaded.sha256})"
        )
    if corpus_sha256(sequences) != manifest["corpus_sha256"]:
        raise EmbeddingMismatchError(f"{store.directory} was embedded from another corpus")
    max_tokens = int(manifest["config"]["max_tokens_per_batch"])
    stride = int(manifest["plan"]["window_stride"])
    pooled_only = [layer for layer in store.layers if not store.has_residues(layer)]
    cache: dict[tuple[int, int], np.ndarray] = {}  # (layer, protein) -> residues
    used = 0

    def compute(
        layers: list[int], proteins: Sequence[int]
    ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        return embed_concatenated(
            loaded,
            [sequences[int(p)] for p in proteins],
            layers,
            max_tokens_per_batch=max_tokens,
            dtype=store.dtype,
            stride=stride,
        )

    def residues(layer: int, proteins: Sequence[int]) -> np.ndarray:
        nonlocal used
        if layer not in store.layers:
            raise KeyError(f"layer {layer} was not embedded (have {store.layers})")
        if cache_bytes <= 0:
            return compute([layer], proteins)[1][layer].astype(np.float32)
        missing = list(dict.fromkeys(int(p) for p in proteins if (layer, int(p)) not in cache))
        fresh: dict[int, np.ndarray] = {}
        if missing:
            layers = sorted({layer, *pooled_only})
            offsets, stacked = compute(layers, missing)
            for i, protein in enumerate(missing):
                reps = {lay: stacked[lay][offsets[i] : offsets[i + 1]] for lay in layers}
                fresh[protein] = reps[layer]
                size = sum(a.nbytes for a in reps.values())
                if used + size <= cache_bytes:
                    cache.update({(lay, protein): a.copy() for lay, a in reps.items()})
                    used += size
        parts = [fresh[int(p)] if int(p) in fresh else cache[(layer, int(p))] for p in proteins]
        return np.concatenate(parts).astype(np.float32)

    return residues
