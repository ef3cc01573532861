"""Residue types and the rule that calls a feature a single-type detector.

Shared by the trainer (which computes each feature's amino-acid profile and labels detectors)
and the explorer (which shows the profile), so both apply one threshold.

Why a rule at all: on the small ESM2 model most residue-level features fire on one amino acid
(the issue that added this measured 143 of 227 features with ≥ 10 active residues on six real
proteins putting ≥ 80% of their activation on one type). Such a feature's GO hits say which
proteins are rich in that residue, not what they do, so it is labelled by its residue type.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

STANDARD = "ACDEFGHIKLMNPQRSTVWY"
OTHER = "X"  # any other letter (B, Z, U, O, X, ...): ambiguous or non-standard residues
ALPHABET = STANDARD + OTHER
N_TYPES = len(ALPHABET)
THREE_LETTER = {
    "A": "Ala", "C": "Cys", "D": "Asp", "E": "Glu", "F": "Phe", "G": "Gly", "H": "His",
    "I": "Ile", "K": "Lys", "L": "Leu", "M": "Met", "N": "Asn", "P": "Pro", "Q": "Gln",
    "R": "Arg", "S": "Ser", "T": "Thr", "V": "Val", "W": "Trp", "Y": "Tyr", "X": "other",
}  # fmt: skip

# A feature is a single-type detector when one residue type carries at least this share of its
# activation mass (the share the issue measured), that share is at least DETECTOR_ENRICHMENT
# times the type's share of the corpus's residues (so it is not composition: the commonest
# type, Leu, is ~10% of residues, so 80% is ≥ 8x for every type on a natural corpus), and the
# profile rests on at least DETECTOR_MIN_RESIDUES residues.
DETECTOR_SHARE = 0.8
DETECTOR_ENRICHMENT = 4.0
DETECTOR_MIN_RESIDUES = 10

_LOOKUP = np.full(256, len(STANDARD), dtype=np.int64)
for _i, _letter in enumerate(STANDARD):
    _LOOKUP[ord(_letter)] = _i
    _LOOKUP[ord(_letter.lower())] = _i


def residue_codes(sequences: Sequence[str]) -> npt.NDArray[np.int64]:
    """Each residue's index in ``ALPHABET``, the sequences back to back (non-standard: X)."""
    joined = "".join(sequences).encode("ascii", errors="replace")
    return _LOOKUP[np.frombuffer(joined, dtype=np.uint8)]


@dataclass(frozen=True)
class Dominance:
    """The residue type that carries most of a feature's activation, and whether it dominates."""

    letter: str
    share: float
    background: float  # the type's share of the corpus's residues
    n_residues: int

    @property
    def name(self) -> str:
        return THREE_LETTER[self.letter]

    @property
    def enrichment(self) -> float | None:
        return self.share / self.background if self.background > 0 else None

    @property
    def is_detector(self) -> bool:
        return is_detector(self.share, self.background, self.n_residues)


def is_detector(share: float, background: float | None, n_residues: int) -> bool:
    """The single-type rule (module constants); ``background`` None: the corpus's composition is
    unknown, so only the share and the support are checked."""
    enriched = background is None or share >= DETECTOR_ENRICHMENT * background
    return share >= DETECTOR_SHARE and enriched and n_residues >= DETECTOR_MIN_RESIDUES
