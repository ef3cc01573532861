"""Embedding one shard: its forward passes, pooling and the atomic write, and the local loop.

A :class:`ShardJob` carries everything any engine (``trainer.engines``) needs to embed a shard of
the plan ``trainer.embed`` made; the file format is the one described there. Kept apart from the
stage so an engine can ship the job to other processes without the manifest bookkeeping, and so
the stage can check a shard already on disk (:func:`complete_shard`) the way it is written.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from app.atomic_write import atomic_path
from app.esm import LoadedModel, embed_concatenated
from trainer.residue_sample import residue_offsets

if TYPE_CHECKING:
    from trainer.embed import EmbedConfig


def pooled_sums(
    residue: np.ndarray, offsets: np.ndarray, chunk_residues: int = 1 << 18
) -> np.ndarray:
    """float32 [n, d]: the sum of each protein's rows ``offsets[i]:offsets[i+1]`` of ``residue``.

    Equals ``np.add.reduceat(residue, offsets[:-1], axis=0, dtype=np.float32)`` up to float32
    summation order, but runs in torch's threads (numpy's reduceat with a float16 → float32 cast
    took 3 s per layer of a 1M-residue shard, the embed stage's bottleneck on a GPU), over
    chunks of whole proteins so the float32 copy stays small whatever the shard and model size.
    """
    lengths = np.diff(offsets)
    out = np.empty((len(lengths), residue.shape[1]), dtype=np.float32)
    first = 0
    while first < len(lengths):
        # Proteins first..last-1: at least one, then as many as fit in chunk_residues.
        last = int(np.searchsorted(offsets, offsets[first] + chunk_residues, side="right")) - 1
        last = min(max(last, first + 1), len(lengths))
        block = torch.from_numpy(residue[offsets[first] : offsets[last]]).float()
        out[first:last] = torch.segment_reduce(
            block, "sum", lengths=torch.from_numpy(lengths[first:last]), axis=0
        ).numpy()
        first = last
    return out


def _write_shard(
    offsets: np.ndarray,
    stacked: dict[int, np.ndarray],
    indices: np.ndarray,
    residue_layers: list[int],
    cfg: EmbedConfig,
    model_sha256: str,
    path: Path,
    stored: np.ndarray | None = None,
) -> None:
    """Pool and write one shard atomically (host work that overlaps the next shard's forward).

    ``stored`` (bool per protein of the shard): residues of those proteins alone, their row
    ranges in ``residue_offsets``; None = every protein's, at ``offsets``.
    """
    layers = sorted(stacked)
    lengths = np.diff(offsets)[:, None]
    tensors: dict[str, np.ndarray] = {"offsets": offsets, "protein_index": indices.astype(np.int64)}
    rows = None if stored is None else np.repeat(stored, lengths[:, 0])
    if stored is not None:
        tensors["residue_offsets"] = residue_offsets(offsets, stored)
    for layer in layers:
        residue = stacked.pop(layer)
        if layer in residue_layers:
            tensors[f"layer{layer}.residue"] = residue if rows is None else residue[rows]
        means = pooled_sums(residue, offsets) / lengths
        tensors[f"layer{layer}.pooled"] = means.astype(cfg.dtype)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"model_sha256": model_sha256})
        os.chmod(tmp, 0o644)  # safetensors creates 0600 files; the server may run as another user


def complete_shard(
    path: Path,
    indices: np.ndarray,
    layers: list[int],
    residue_layers: list[int],
    sha256: str,
    stored: np.ndarray | None = None,
) -> bool:
    """Whether ``path`` is this shard as the current plan would write it: same model, proteins,
    tensors and stored residues (header and index tensors only; an unreadable file is simply
    recomputed)."""
    if not path.exists():
        return False
    expected = {"offsets", "protein_index"} | {f"layer{n}.pooled" for n in layers}
    expected |= {f"layer{n}.residue" for n in residue_layers}
    if stored is not None:
        expected.add("residue_offsets")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("model_sha256") != sha256 or set(handle.keys()) != expected:
                return False
            if not np.array_equal(handle.get_tensor("protein_index"), indices):
                return False
            if stored is None:
                return True
            offsets = handle.get_tensor("offsets")
            return bool(np.array_equal(handle.get_tensor("residue_offsets"),
                                       residue_offsets(offsets, stored)))  # fmt: skip
    except (OSError, SafetensorError):  # a truncated or foreign file: recompute it
        return False


@dataclasses.dataclass
class ShardJob:
    """Everything embedding any shard of a plan needs, for whichever engine runs it (picklable:
    the Ray engine ships it to each actor once). Shard ``k`` holds corpus rows ``shards[k]``,
    longest first, and is written to ``out_dir / files[k]``."""

    loaded: LoadedModel
    sequences: list[str]
    shards: list[np.ndarray]
    files: list[str]
    out_dir: Path
    layers: list[int]
    residue_layers: list[int]
    cfg: EmbedConfig
    # Bool per corpus row: whose residues are stored (None: every protein's).
    residue_stored: np.ndarray | None = None

    def stored(self, k: int) -> np.ndarray | None:
        """Bool per protein of shard ``k``: whose residues it stores (None: all)."""
        return None if self.residue_stored is None else self.residue_stored[self.shards[k]]

    def n_residues(self, k: int) -> int:
        return sum(len(self.sequences[int(i)]) for i in self.shards[k])

    def path(self, k: int) -> Path:
        return self.out_dir / self.files[k]

    def forward(
        self, k: int, loaded: LoadedModel, on_batch: Callable[[int], None] | None = None
    ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Shard ``k``'s forward passes with ``loaded`` (token-budgeted batches of its
        length-sorted proteins): ``(offsets, {layer: residues})`` in shard order."""
        return embed_concatenated(
            loaded,
            [self.sequences[int(i)] for i in self.shards[k]],
            self.layers,
            max_tokens_per_batch=self.cfg.max_tokens_per_batch,
            dtype=np.dtype(self.cfg.dtype),
            stride=self.cfg.window_stride,
            on_batch=on_batch,
        )

    def write(self, k: int, offsets: np.ndarray, stacked: dict[int, np.ndarray]) -> None:
        """Pool and write shard ``k`` atomically (the file lands by rename)."""
        _write_shard(offsets, stacked, self.shards[k], self.residue_layers, self.cfg,
                     self.loaded.sha256, self.path(k), stored=self.stored(k))  # fmt: skip

    def complete(self, k: int) -> bool:
        """Whether shard ``k``'s file is already on disk as this plan writes it."""
        return complete_shard(self.path(k), self.shards[k], self.layers, self.residue_layers,
                              self.loaded.sha256, self.stored(k))  # fmt: skip


def embed_shards_locally(
    job: ShardJob, todo: Sequence[int], progress: Callable[[int], None]
) -> Iterator[tuple[int, float, float, float]]:
    """The local engine's loop: ``(shard, forward_s, write_s, wait_s)`` per shard written.

    One writer thread: shard k is pooled and written while shard k+1 runs on the model, so the
    device does not wait on the disk. At most two shards are in memory; a shard is reported
    only once its file is in place. The manifest keeps, per shard, the seconds of its forward
    passes, of its pooling and writing, and how long the forward loop waited for the writer
    (where a run's time goes, e.g. on a GPU machine whose logs are all one sees).
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer") as writer:
        pending: tuple[int, float, Future[float]] | None = None
        for k in todo:
            started = time.perf_counter()
            offsets, stacked = job.forward(k, job.loaded, progress)
            forward_s = time.perf_counter() - started
            if pending is not None:
                yield _finish_shard(pending)
            pending = (k, forward_s, writer.submit(_timed, job.write, k, offsets, stacked))
            del offsets, stacked
        if pending is not None:
            yield _finish_shard(pending)


def _timed(fn: Callable[..., None], *args: Any) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def _finish_shard(pending: tuple[int, float, Future[float]]) -> tuple[int, float, float, float]:
    """Wait for a shard's write: ``(shard, forward_s, write_s, wait_s)``."""
    k, forward_s, future = pending
    started = time.perf_counter()
    write_s = future.result()  # re-raises a failed write here, before anything is marked done
    return k, forward_s, write_s, time.perf_counter() - started
