"""The arrays analyze (and effects) write and publish reads back: one dataclass per ``.npz``.

A field is an array of the archive under the same name; ``save`` writes them (atomically,
compressed, loadable without pickle) and ``load`` reads them back, so writer and reader cannot
disagree on a key. Optional fields (``None``) are absent from archives written before they
existed, and ``load`` gives ``None`` for them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Self

import numpy as np

from app.atomic_write import atomic_file


class NpzArchive:
    """Base of the archive dataclasses: fields are arrays, ``None`` for an absent optional."""

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            f.name: value
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if (value := getattr(self, f.name)) is not None
        }

    def save(self, path: Path) -> Path:
        with atomic_file(path) as handle:
            np.savez_compressed(handle, allow_pickle=False, **self.arrays())  # type: ignore[arg-type]
        return path

    @classmethod
    def load(cls, path: Path) -> Self:
        """Every array at once (indexing an NpzFile re-reads the member each time)."""
        with np.load(path, allow_pickle=False) as archive:
            found: dict[str, Any] = {
                f.name: archive[f.name]
                for f in dataclasses.fields(cls)  # type: ignore[arg-type]
                if f.name in archive.files
            }
        try:
            return cls(**found)
        except TypeError as error:
            raise ValueError(f"{path}: not a {cls.__name__} archive ({error})") from error


@dataclasses.dataclass
class FeatureStats(NpzArchive):
    """``features.npz``: per feature, its density, activation summary and histogram."""

    n_active: np.ndarray  # [n_latents] proteins it fires on
    density: np.ndarray  # fraction of proteins
    residue_density: np.ndarray  # fraction of residues (residue level; zeros otherwise)
    max_activation: np.ndarray
    mean_activation: np.ndarray  # over the proteins it fires on
    hist_counts: np.ndarray  # [n_latents, n_bins]
    hist_edges: np.ndarray  # [n_latents, n_bins + 1]
    is_dead: np.ndarray


@dataclasses.dataclass
class Examples(NpzArchive):
    """``examples.npz``: each feature's example proteins by activation bin, with their residue
    values packed (example i's are ``values[offsets[i]:offsets[i + 1]]``)."""

    feature: np.ndarray
    protein: np.ndarray  # corpus row
    bin: np.ndarray  # "top" or a quantile bin's label
    rank: np.ndarray
    activation: np.ndarray
    max_position: np.ndarray  # residue of the peak
    offsets: np.ndarray
    values: np.ndarray  # float16
    structure: np.ndarray | None = None  # structures.json row of the best chain; -1: none
    structure_share: np.ndarray | None = None  # its share of the activation mass
    structure_peak_covered: np.ndarray | None = None


@dataclasses.dataclass
class ProteinTop(NpzArchive):
    """``protein_top.npz``: each protein's most active features, residue values packed."""

    protein: np.ndarray
    feature: np.ndarray
    rank: np.ndarray
    activation: np.ndarray
    offsets: np.ndarray
    values: np.ndarray


@dataclasses.dataclass
class Neighbors(NpzArchive):
    """``neighbors.npz``: each feature's nearest decoder directions."""

    indices: np.ndarray  # [n_latents, k]
    cosines: np.ndarray  # [n_latents, k]


@dataclasses.dataclass
class FeatureMap(NpzArchive):
    """``feature_map.npz``: 2-D coordinates per feature (NaN: off the map)."""

    xy: np.ndarray  # [n_latents, 2]


@dataclasses.dataclass
class Effects(NpzArchive):
    """``effects.npz``: what clamping each feature makes the model predict (``trainer.effects``)."""

    mean: np.ndarray  # [n_latents, 20] Δ log p per amino acid
    std: np.ndarray
    n_examples: np.ndarray  # examples measured (0: none)
    activation: np.ndarray  # the typical activation clamped to
    amino_acids: np.ndarray | None = None
    read_at: np.ndarray | None = None  # "peak residue" | "protein mean"; absent: peak residue


def load_columns(path: Path) -> dict[str, np.ndarray]:
    """Every array of a column archive (GO / domain hits, alignments: columns vary with the
    protocol and the trainer version, so these stay name -> array)."""
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def save_columns(path: Path, columns: dict[str, np.ndarray]) -> Path:
    """Write a column archive atomically (plain arrays: it loads without pickle)."""
    with atomic_file(path) as handle:
        np.savez_compressed(handle, allow_pickle=False, **columns)  # type: ignore[arg-type]
    return path
