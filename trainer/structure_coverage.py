"""Which structure chain shows a feature's active residues, for every active (feature, protein).

A structure chain resolves only part of its protein; a feature that peaks outside it leaves the 3D
view grey. For each protein with a chain and each feature active on it, this finds the chain that
shows the feature best (``app.structure_coverage.Coverage.key``: the peak residue resolved, then
the most activation mass on resolved residues) and records that chain's share of the mass and
whether it resolves the peak. Analyze ranks the "structure" examples by it and stores it with
every example; ``app.structure_coverage`` computes the same for one pair (the tests' reference).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
from torch import Tensor

from app.structure_coverage import resolved_positions


@dataclass(frozen=True)
class Chain:
    """One mapped chain: its row in the corpus's ``structures.json`` and the 0-based sequence
    positions it resolves."""

    index: int
    positions: npt.NDArray[np.int64]


def chains_by_protein(
    mappings: Iterable[tuple[int, Sequence[int]]], lengths: npt.NDArray[np.int64]
) -> dict[int, list[Chain]]:
    """``{protein: chains}`` from ``(protein, sequence_positions)`` per structures.json row."""
    out: dict[int, list[Chain]] = {}
    for index, (protein, positions) in enumerate(mappings):
        resolved = resolved_positions(positions, int(lengths[protein]))
        out.setdefault(protein, []).append(Chain(index, resolved))
    return out


@dataclass
class PairCoverage:
    """Parallel arrays, one entry per active (feature, protein) pair with a chain."""

    feature: npt.NDArray[np.int64]
    protein: npt.NDArray[np.int64]
    chain: npt.NDArray[np.int64]  # structures.json row of the best chain
    activation_share: npt.NDArray[np.float32]  # NaN: the feature has no positive mass there
    peak_covered: npt.NDArray[np.bool_]
    covered_mass: npt.NDArray[np.float32]

    @classmethod
    def empty(cls) -> PairCoverage:
        i, f = np.zeros(0, np.int64), np.zeros(0, np.float32)
        return cls(i, i, i, f, np.zeros(0, bool), f)

    def index(self) -> dict[tuple[int, int], int]:
        """``{(feature, protein): row}``."""
        pairs = zip(self.feature.tolist(), self.protein.tolist(), strict=True)
        return {pair: row for row, pair in enumerate(pairs)}


def best_chains(values: Tensor, chains: Sequence[Chain]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For ``values [L, F]`` (F features on one protein): per feature the best chain's position
    in ``chains``, its covered share (NaN without mass), whether it resolves the peak, and its
    covered mass. Ties go to the earlier chain, as ``app.structure_coverage.best_chain``."""
    length = values.shape[0]
    masks = torch.zeros(len(chains), length, dtype=torch.bool, device=values.device)
    for c, chain in enumerate(chains):
        masks[c, torch.from_numpy(chain.positions).to(values.device)] = True
    positive = values.double().clamp_min(0.0)
    total = positive.sum(dim=0)  # [F]
    covered = masks.double() @ positive  # [C, F]
    peak = values.argmax(dim=0)  # [F], the first of equal maxima (as np.argmax)
    peak_covered = masks[:, peak]  # [C, F]
    # Lexicographic (peak covered, covered mass): lift every peak-covering chain above the rest.
    lifted = covered + peak_covered.double() * (total + 1.0)
    best = lifted.argmax(dim=0)  # first maximum: the earlier chain on ties
    columns = torch.arange(values.shape[1], device=values.device)
    mass = covered[best, columns]
    share = torch.where(total > 0, mass / total.clamp_min(1e-30), torch.nan)
    return best, share, peak_covered[best, columns], mass


def collect(
    per_protein: Iterable[tuple[int, Tensor]],
    acts: sp.csr_matrix,
    chains: dict[int, list[Chain]],
) -> PairCoverage:
    """``PairCoverage`` of every protein of ``per_protein`` (protein, values ``[L, n_latents]``)
    for the features active on it (``acts`` row > 0)."""
    parts: list[tuple[np.ndarray, ...]] = []
    csr = acts.tocsr()
    for protein, values in per_protein:
        row = slice(csr.indptr[protein], csr.indptr[protein + 1])
        features = csr.indices[row][csr.data[row] > 0].astype(np.int64)
        if features.size == 0:
            continue
        own = chains[protein]
        cols = torch.from_numpy(features).to(values.device)
        best, share, peak, mass = best_chains(values[:, cols], own)
        chain_rows = np.array([c.index for c in own], dtype=np.int64)[best.cpu().numpy()]
        parts.append((
            features, np.full(features.size, protein, np.int64), chain_rows,
            share.float().cpu().numpy(), peak.cpu().numpy(), mass.float().cpu().numpy(),
        ))  # fmt: skip
    if not parts:
        return PairCoverage.empty()
    columns = [np.concatenate(c) for c in zip(*parts, strict=True)]
    return PairCoverage(*columns)
