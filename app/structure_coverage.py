"""How much of a feature's activation on a protein a structure chain can show.

A chain resolves only some of the protein's residues (the stored alignment maps each chain residue
to a sequence position, or to none). A 3D view coloured by a feature is grey where the feature
fires outside that set, so every view states: which sequence range the chain covers, the share of
the feature's activation mass (its positive per-residue values) on residues the chain resolves,
and whether the peak residue is among them. The trainer's analyze stage computes the same figures
for every (feature, protein) pair at once (``trainer.structure_coverage``), checked against these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Coverage:
    """One chain against one feature's per-residue values on its protein."""

    activation_share: float | None  # positive mass on resolved residues / all; None: no mass
    peak_covered: bool  # the residue of the highest value is resolved
    covered_mass: float  # positive values summed over resolved residues

    def key(self) -> tuple[bool, float]:
        """How chains (and structure examples) are ranked: the peak shown first, then the
        activation mass shown."""
        return self.peak_covered, self.covered_mass


def resolved_positions(sequence_positions: Sequence[int], length: int) -> np.ndarray:
    """Sorted, distinct 0-based sequence positions a chain resolves (inside ``length``): marked
    on a mask of the protein, which costs O(length) where sorting them would cost more."""
    positions = np.asarray(sequence_positions, dtype=np.int64)
    mask = np.zeros(max(length, 0), dtype=bool)
    mask[positions[(positions >= 0) & (positions < length)]] = True
    return np.flatnonzero(mask)


def coverage(
    values: Sequence[float] | np.ndarray, sequence_positions: Sequence[int], peak: int | None = None
) -> Coverage:
    """The chain's coverage of ``values`` (one per sequence position). ``peak``: the peak's
    0-based position (a stored ``max_position``, found on the unrounded values); by default the
    first position of the highest value, as analyze finds it."""
    vals = np.asarray(values, dtype=np.float64)
    if vals.size == 0:
        return Coverage(None, False, 0.0)
    resolved = resolved_positions(sequence_positions, vals.size)
    positive = np.clip(vals, 0.0, None)
    total = float(positive.sum())
    covered = float(positive[resolved].sum())
    peak = int(np.argmax(vals)) if peak is None else peak
    share = covered / total if total > 0 else None
    return Coverage(share, bool(np.isin(peak, resolved)), covered)


def best_chain(
    values: Sequence[float] | np.ndarray,
    chains: Sequence[Sequence[int]],
    peak: int | None = None,
) -> tuple[int, Coverage] | None:
    """The chain (index into ``chains``, each its sequence positions) that shows the feature
    best by ``Coverage.key``; ties go to the earlier chain. None without chains."""
    best: tuple[int, Coverage] | None = None
    for i, positions in enumerate(chains):
        found = coverage(values, positions, peak)
        if best is None or found.key() > best[1].key():
            best = (i, found)
    return best


def ranges_of(resolved: np.ndarray) -> list[tuple[int, int]]:
    """Runs of consecutive values in sorted distinct ``resolved``, 1-based and inclusive."""
    if resolved.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(resolved) > 1)
    starts = np.concatenate([[resolved[0]], resolved[breaks + 1]])
    stops = np.concatenate([resolved[breaks], [resolved[-1]]])
    return [(int(a) + 1, int(b) + 1) for a, b in zip(starts, stops, strict=True)]
