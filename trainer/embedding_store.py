"""Read access to a finished embed stage's shards (format: ``trainer.embed``).

Pooled vectors of every layer, per-residue vectors of the residue layers (of the residue sample's
proteins where there is one), read one protein, one batch or a random sample at a time, so
neither training nor analysis needs the corpus in memory. Residues that are not stored come from
a :data:`ResidueSource` (``trainer.residue_replay``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors import safe_open

from trainer.layout import EmbeddingFiles

# (layer, corpus rows) -> float32 [sum of their lengths, d]: the rows' residues back to back.
ResidueSource = Callable[[int, Sequence[int]], np.ndarray]


class ResiduesNotStoredError(KeyError):
    """A layer was embedded pooled-only: its per-residue vectors are not in the shards."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class EmbeddingStore:
    """Read access to a finished embed stage; every index is a corpus row (protein ``i``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        path = EmbeddingFiles(self.directory).manifest
        if not path.exists():
            raise FileNotFoundError(f"{path}: no embeddings here (run the embed stage)")
        self.manifest: dict[str, Any] = json.loads(path.read_text())
        if not self.manifest.get("done"):
            raise RuntimeError(f"{path}: the embed stage has not finished (rerun it to resume)")
        self.layers: list[int] = list(self.manifest["layers"])
        self.residue_layers: list[int] = list(self.manifest.get("residue_layers", self.layers))
        self.d_model: int = int(self.manifest["d_model"])
        self.n_proteins: int = int(self.manifest["n_proteins"])
        self.dtype = np.dtype(self.manifest["dtype"])
        self.lengths = np.zeros(self.n_proteins, dtype=np.int64)
        self._shard_of = np.full(self.n_proteins, -1, dtype=np.int64)
        self._row_of = np.zeros(self.n_proteins, dtype=np.int64)
        self._index: list[np.ndarray] = []
        self._offsets: list[np.ndarray] = []
        # Row ranges in the residue tensors (``offsets`` unless the shards store a sample).
        self._residue_offsets: list[np.ndarray] = []
        self._files = [self.directory / s["file"] for s in self.manifest["shards"]]
        self._maps: dict[tuple[int, str], np.ndarray] = {}  # (shard, tensor) -> memory map
        for k, file in enumerate(self._files):
            with safe_open(str(file), framework="numpy") as handle:
                index, offsets = handle.get_tensor("protein_index"), handle.get_tensor("offsets")
                names = handle.keys()
                rows = (
                    handle.get_tensor("residue_offsets") if "residue_offsets" in names else offsets
                )
            self._index.append(index)
            self._offsets.append(offsets)
            self._residue_offsets.append(rows)
            self._shard_of[index] = k
            self._row_of[index] = np.arange(len(index))
            self.lengths[index] = np.diff(offsets)
        if (self._shard_of < 0).any():
            raise RuntimeError(f"{self.directory}: shards do not cover every protein")
        self.residue_stored = np.zeros(self.n_proteins, dtype=bool)
        for index, rows in zip(self._index, self._residue_offsets, strict=True):
            self.residue_stored[index] = np.diff(rows) > 0

    @property
    def residue_sampled(self) -> bool:
        """Whether the residue layers store a sample of the proteins (the rest: recompute)."""
        return self.manifest.get("residue_sample") is not None

    @property
    def n_stored_residues(self) -> int:
        """Residues whose vectors the residue layers store (every residue unless sampled)."""
        return sum(int(rows[-1]) for rows in self._residue_offsets)

    def _name(self, layer: int, kind: str) -> str:
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not embedded (have {self.layers})")
        if kind == "residue" and layer not in self.residue_layers:
            raise ResiduesNotStoredError(
                f"layer {layer} was embedded pooled-only in {self.directory}: its per-residue "
                f"vectors are not stored (residue layers: {self.residue_layers}); compute them "
                "with the model (trainer.residue_replay.model_residue_source) or embed again with "
                "residue_layers including it"
            )
        return f"layer{layer}.{kind}"

    def has_residues(self, layer: int) -> bool:
        """Whether ``layer``'s per-residue vectors are in the shards (not only pooled ones)."""
        return layer in self.residue_layers

    def pooled(self, layer: int) -> np.ndarray:
        """float32 [n_proteins, d]: mean over each protein's residues (BOS/EOS excluded)."""
        name = self._name(layer, "pooled")
        out = np.empty((self.n_proteins, self.d_model), dtype=np.float32)
        for file, index in zip(self._files, self._index, strict=True):
            with safe_open(str(file), framework="numpy") as handle:
                out[index] = handle.get_tensor(name)
        return out

    def shard_proteins(self, k: int) -> np.ndarray:
        """Corpus rows of shard ``k``'s proteins in shard order (longest first)."""
        return self._index[k]

    def location(self, i: int) -> tuple[int, int]:
        """(shard, row) of protein ``i``: sorting by it reads the shards in file order."""
        return int(self._shard_of[i]), int(self._row_of[i])

    def residues(self, layer: int, i: int) -> np.ndarray:
        """float32 [len_i, d]: per-residue activations of protein ``i``."""
        name = self._name(layer, "residue")
        if not self.residue_stored[i]:
            raise ResiduesNotStoredError(
                f"protein {i} is outside the residue sample of {self.directory} "
                f"({self.manifest['residue_sample']}): recompute its residues with the model "
                "(trainer.residue_replay.ReplayedResidues)"
            )
        k, row = int(self._shard_of[i]), int(self._row_of[i])
        lo, hi = int(self._residue_offsets[k][row]), int(self._residue_offsets[k][row + 1])
        # One memory map per shard and tensor, kept: example tracks read thousands of proteins
        # one by one, and reopening the file each time doubled the cost (0.5 vs 0.23 ms each).
        rows = self._maps.get((k, name))
        if rows is None:
            rows = self._maps[(k, name)] = tensor_map(self._files[k], name)
        return np.array(rows[lo:hi], dtype=np.float32)  # a copy, also for float32 shards

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its memory maps (another process maps the files itself)."""
        return {**self.__dict__, "_maps": {}}

    @property
    def n_shards(self) -> int:
        return len(self._files)

    def iter_residue_batches(
        self, layer: int, max_residues: int, source: ResidueSource | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(protein_indices, offsets, float32 [n_res, d])`` in shard order, ≤ max_residues each.

        A protein longer than ``max_residues`` comes alone in its batch. Proteins outside a
        residue sample get their residues from ``source`` (the batches stay the same).
        """
        for k in range(self.n_shards):
            yield from self.iter_shard_residue_batches(layer, k, max_residues, source)

    def iter_shard_residue_batches(
        self, layer: int, k: int, max_residues: int, source: ResidueSource | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """:meth:`iter_residue_batches` of shard ``k`` alone (batches never span shards)."""
        name = self._name(layer, "residue")
        index, offsets = self._index[k], self._offsets[k]
        with safe_open(str(self._files[k]), framework="numpy") as handle:
            data = handle.get_slice(name)
            start = 0
            while start < len(index):
                stop = start + 1
                while stop < len(index) and offsets[stop + 1] - offsets[start] <= max_residues:
                    stop += 1
                lo, hi = int(offsets[start]), int(offsets[stop])
                if self.residue_sampled:
                    x = self._sampled_rows(layer, k, start, stop, data, source)
                else:
                    x = data[lo:hi].astype(np.float32)
                yield index[start:stop], offsets[start : stop + 1] - lo, x
                start = stop

    def _sampled_rows(
        self, layer: int, k: int, start: int, stop: int, data: Any, source: ResidueSource | None
    ) -> np.ndarray:
        """float32 residues of shard ``k``'s proteins ``start:stop``: the stored ones read from
        the shard, the others from ``source``."""
        index, offsets, rows = self._index[k], self._offsets[k], self._residue_offsets[k]
        stored = np.diff(rows[start : stop + 1]) > 0
        out = np.empty((int(offsets[stop] - offsets[start]), self.d_model), dtype=np.float32)
        mask = np.repeat(stored, np.diff(offsets[start : stop + 1]))
        if stored.any():
            out[mask] = data[int(rows[start]) : int(rows[stop])].astype(np.float32)
        if not stored.all():
            missing = index[start:stop][~stored]
            if source is None:
                raise ResiduesNotStoredError(
                    f"{self.directory} stores the residues of a sample of the proteins "
                    f"({self.manifest['residue_sample']}); the others' need a residue source "
                    "(trainer.residue_replay.ReplayedResidues)"
                )
            out[~mask] = source(layer, missing.tolist())
        return out

    def residues_of(
        self, layer: int, proteins: Sequence[int], source: ResidueSource | None = None
    ) -> np.ndarray:
        """float32 residues of ``proteins`` back to back: stored ones from the shards, the
        others (outside a residue sample) from ``source``, in one call."""
        missing = [int(p) for p in proteins if not self.residue_stored[int(p)]]
        if not missing or source is None:
            return np.concatenate([self.residues(layer, int(p)) for p in proteins])
        computed = source(layer, missing)
        cuts = np.cumsum(self.lengths[missing])[:-1]
        fresh = dict(zip(missing, np.split(computed, cuts), strict=True))
        return np.concatenate(
            [fresh[int(p)] if int(p) in fresh else self.residues(layer, int(p)) for p in proteins]
        )

    def sample_residues(
        self, layer: int, n: int, seed: int, dtype: npt.DTypeLike = np.float32
    ) -> np.ndarray:
        """``[n, d]`` residues drawn uniformly without replacement, in random order.

        Only the drawn rows are read (a memory map per shard, rows in file order), so sampling
        from the full corpus needs memory for the sample alone. Draws from the stored residues:
        with ``embed.residue_proteins``, the sampled proteins' alone. ``dtype`` float16 keeps
        the stored values exactly at half the memory.
        """
        name = self._name(layer, "residue")
        sizes = np.array([int(o[-1]) for o in self._residue_offsets], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        if n > starts[-1]:
            raise ValueError(f"asked for {n} residues, only {starts[-1]} stored")
        picks = np.random.default_rng(seed).choice(int(starts[-1]), size=n, replace=False)
        shard = np.searchsorted(starts, picks, side="right") - 1
        out = np.empty((n, self.d_model), dtype=dtype)
        for k, file in enumerate(self._files):
            where = np.flatnonzero(shard == k)
            if len(where):
                where = where[np.argsort(picks[where], kind="stable")]  # sequential reads
                out[where] = tensor_map(file, name)[picks[where] - starts[k]]
        return out


_SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "I64": np.int64}


def tensor_map(file: Path, name: str) -> np.ndarray:
    """A read-only memory map of one tensor in a safetensors file: rows are read when indexed.

    safetensors' own slices take ranges only; random rows of a shard would otherwise mean
    loading the whole tensor. Layout: 8-byte little-endian header size, JSON header, raw data.
    """
    with open(file, "rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        info = json.loads(handle.read(header_size))[name]
    begin, _ = info["data_offsets"]
    return np.memmap(file, dtype=_SAFETENSORS_DTYPES[info["dtype"]], mode="r",
                     offset=8 + header_size + begin, shape=tuple(info["shape"]))  # fmt: skip
