"""The residue sample: which proteins' per-residue vectors the embed stage stores.

With ``embed.residue_proteins`` the residue layers store a seeded sample of the proteins alone,
so their disk is bounded by the sample, not the corpus. This module draws the sample, maps it
onto a shard's residue rows (``residue_offsets``) and records it (the manifest's
``residue_sample``, ``residue_proteins.npy``); ``trainer.residue_replay`` recomputes the rest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.atomic_write import atomic_file
from trainer.layout import EmbeddingFiles

if TYPE_CHECKING:
    from trainer.embed import EmbedConfig


def choose_residue_proteins(n_proteins: int, count: int | None, seed: int) -> np.ndarray | None:
    """Sorted corpus rows whose residues are stored: ``count`` drawn with ``seed`` (a function of
    the corpus size and the seed alone, not of the shard plan); None = every protein."""
    if count is None or count >= n_proteins:
        return None
    rows = np.random.default_rng(seed).choice(n_proteins, size=count, replace=False)
    return np.sort(rows).astype(np.int64)


def residue_offsets(offsets: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """Row ranges of a shard's stored residues: ``offsets`` with unstored proteins' lengths 0."""
    out = np.zeros_like(offsets)
    np.cumsum(np.diff(offsets) * stored, out=out[1:])
    return out


def sample_record(
    cfg: EmbedConfig,
    seed: int,
    chosen: np.ndarray | None,
    lengths: np.ndarray,
    files: EmbeddingFiles,
) -> dict[str, Any] | None:
    """The manifest's ``residue_sample``: what was asked, what it chose (None: every protein).
    Part of the directory's identity: another sample embeds again."""
    if chosen is None:
        return None
    return {
        "proteins": cfg.residue_proteins,
        "seed": seed,
        "n_residues": int(lengths[chosen].sum()),
        "file": files.residue_proteins.name,
        "sha256": hashlib.sha256(chosen.astype("<i8").tobytes()).hexdigest(),
    }


def sample_text(record: dict[str, Any] | None) -> str:
    if record is None:
        return "every protein"
    return f"{record['proteins']} proteins, seed {record['seed']}"


def write_sample_file(path: Path, chosen: np.ndarray | None) -> None:
    """``residue_proteins.npy``: the sorted corpus rows whose residues the shards store (absent
    when every protein's are)."""
    if chosen is None:
        path.unlink(missing_ok=True)
        return
    with atomic_file(path) as handle:
        np.save(handle, chosen.astype(np.int64))
