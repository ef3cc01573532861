"""Each feature's amino-acid profile: the share of its activation mass on each residue type.

Residue-level dictionaries: summed over every residue of the corpus the feature fires on, in
analyze's one encoding pass (``AaMass.add``). Protein-level dictionaries have no per-residue
activation; their profile is the positive part of the exact per-residue attribution of the
pooled pre-activation (``SparseDictionary.residue_attribution``, bias shared equally) over the
feature's example proteins (top, quantile-bin and structure examples), the tracks analyze
computes anyway (``profile_from_tracks``). The corpus's residue composition is the background
that says whether a share is more than composition (``app.residue_types``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from app.atomic_write import atomic_file
from app.residue_types import ALPHABET, N_TYPES, residue_codes
from app.stage_summaries import AaProfileSummary

BASIS_CORPUS = "corpus"  # residue level: every residue the feature fires on
BASIS_EXAMPLES = "examples"  # protein level: attribution over the example proteins


@dataclass
class AaProfile:
    """Per feature: mass per residue type and the residues behind it; the corpus's composition."""

    mass: npt.NDArray[np.float64]  # [n_latents, N_TYPES]
    n_residues: npt.NDArray[np.int64]  # [n_latents]: residues with non-zero mass
    background: npt.NDArray[np.float64]  # [N_TYPES]: share of the corpus's residues per type
    basis: str

    def shares(self) -> npt.NDArray[np.float32]:
        """Mass per type over the feature's total (rows of zeros where it has none)."""
        total = self.mass.sum(axis=1, keepdims=True)
        return np.divide(self.mass, total, out=np.zeros_like(self.mass), where=total > 0).astype(
            np.float32
        )

    def save(self, path: Path) -> None:
        with atomic_file(path) as handle:
            np.savez_compressed(handle, shares=self.shares(), mass=self.mass,
                                n_residues=self.n_residues, background=self.background,
                                basis=np.array(self.basis), alphabet=np.array(ALPHABET))  # fmt: skip

    def summary(self) -> AaProfileSummary:
        """What the analysis summary records of the profiles (the page shows the background)."""
        return AaProfileSummary(
            basis=self.basis,
            alphabet=ALPHABET,
            background=[round(float(b), 6) for b in self.background],
        )


def composition(sequences: Iterable[str]) -> npt.NDArray[np.float64]:
    """Share of each residue type over all residues of ``sequences``."""
    counts = np.bincount(residue_codes(list(sequences)), minlength=N_TYPES).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


class AaMass:
    """Activation mass per (feature, residue type), summed over residue batches on the device
    the latents are on (one ``index_add_`` per batch)."""

    def __init__(self, sequences: Sequence[str], n_latents: int, device: torch.device):
        self.sequences = sequences
        self.n_latents = n_latents
        self._mass = torch.zeros(n_latents * N_TYPES, dtype=torch.float64, device=device)
        self._residues = torch.zeros(n_latents, dtype=torch.long, device=device)

    def add(
        self,
        protein_indices: Sequence[int] | npt.NDArray[np.int64],
        lengths: npt.NDArray[np.int64],
        rows: Tensor,
        cols: Tensor,
        vals: Tensor,
    ) -> None:
        """One batch: its proteins' residues back to back, and the non-zero latents (row within
        the batch, feature, value)."""
        codes = residue_codes([self.sequences[int(p)] for p in protein_indices])
        if len(codes) != int(np.sum(lengths)):
            raise ValueError(
                f"residue rows ({int(np.sum(lengths))}) do not match the sequences' residues "
                f"({len(codes)}): embeddings of another corpus?"
            )
        types = torch.from_numpy(codes).to(rows.device)
        self._mass.index_add_(0, cols * N_TYPES + types[rows], vals.double())
        self._residues += torch.bincount(cols, minlength=self.n_latents)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(mass ``[n_latents, N_TYPES]`` float64, residues fired on ``[n_latents]``) so far."""
        mass = self._mass.reshape(self.n_latents, N_TYPES).cpu().numpy()
        return mass, self._residues.cpu().numpy().astype(np.int64)

    def merge(self, mass: np.ndarray, residues: np.ndarray) -> None:
        """Add another pass's :meth:`arrays` (one embedding shard's, from an engine's unit)."""
        # Copies: a unit's arrays may come back read-only (unpickled from another process).
        self._mass += torch.tensor(
            np.asarray(mass, dtype=np.float64).ravel(), device=self._mass.device
        )
        self._residues += torch.tensor(np.asarray(residues), device=self._residues.device)

    def result(self) -> AaProfile:
        return AaProfile(
            mass=self._mass.reshape(self.n_latents, N_TYPES).cpu().numpy(),
            n_residues=self._residues.cpu().numpy().astype(np.int64),
            background=composition(self.sequences),
            basis=BASIS_CORPUS,
        )


def profile_from_tracks(
    tracks: Mapping[tuple[int, int], npt.NDArray[np.float32]],
    pairs: Iterable[tuple[int, int]],
    sequences: Sequence[str],
    n_latents: int,
) -> AaProfile:
    """Profiles from per-residue tracks keyed ``(feature, protein)``: each distinct pair of
    ``pairs`` adds its positive values to the residue types of the protein's sequence."""
    mass = np.zeros((n_latents, N_TYPES), dtype=np.float64)
    n_residues = np.zeros(n_latents, dtype=np.int64)
    for feature, protein in dict.fromkeys(pairs):
        values = np.asarray(tracks[(feature, protein)], dtype=np.float64)
        codes = residue_codes([sequences[protein]])
        if len(codes) != len(values):
            raise ValueError(
                f"protein {protein}: {len(values)} residue values for a sequence of {len(codes)}"
            )
        positive = np.maximum(values, 0.0)
        mass[feature] += np.bincount(codes, weights=positive, minlength=N_TYPES)
        n_residues[feature] += int(np.count_nonzero(positive))
    return AaProfile(mass, n_residues, composition(sequences), BASIS_EXAMPLES)


def load_profile(path: Path) -> AaProfile | None:
    """A saved profile, or None where the analysis predates profiles."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as archive:
        if str(archive["alphabet"]) != ALPHABET:
            raise ValueError(f"{path}: profile over alphabet {archive['alphabet']}, not {ALPHABET}")
        return AaProfile(
            mass=archive["mass"],
            n_residues=archive["n_residues"],
            background=archive["background"],
            basis=str(archive["basis"]),
        )
