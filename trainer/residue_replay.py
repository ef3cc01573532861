"""Residues the embed stage did not store, recomputed exactly as it computed them.

With ``embed.residue_proteins`` the shards store per-residue vectors for a seeded sample of the
proteins only, so disk is bounded by the sample, not the corpus. Analysis still encodes every
protein: :class:`ReplayedResidues` recomputes a protein's residues by running the forward batch
the embed stage ran it in (the shard's proteins, windows and token budget, from the manifest),
so on the same device the values equal what the shard would have stored, bit for bit, and an
analysis over a sampled store equals one over a full store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.esm import LoadedModel, embed_selected
from trainer.embed import EmbeddingMismatchError, EmbeddingStore, corpus_sha256


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
