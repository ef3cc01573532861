"""Offline labels that do not mislead: single-type detectors are named by their residue type, a GO
label needs a term beyond protein length, and a withheld GO label says why.

The profiles are summed by the trainer's own accumulator over real human Swiss-Prot sequences:
a feature firing on every cysteine and one firing on every residue (whose profile is then the
corpus's composition, the background every share is compared with).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.residue_types import (
    ALPHABET,
    DETECTOR_MIN_RESIDUES,
    DETECTOR_SHARE,
    Dominance,
    is_detector,
    residue_codes,
)
from tests.realdata import human_proteins
from trainer.aa_profile import AaMass, AaProfile
from trainer.explain.labels import GoHit, auto_labels, feature_label
from trainer.publish import profile_columns

CYS, EVERYWHERE = 0, 1
# Real GO terms; what is tested is which rule applies, not what the terms mean.
KEPT = GoHit("GO:0005886", "plasma membrane", "CC", 3, 1e-5, 2.5, q_length=1e-3)
LENGTH_EXPLAINED = GoHit("GO:0004930", "G protein-coupled receptor activity", "MF", 4, 1e-6, 3.1,
                         q_length=0.4)  # fmt: skip
WEAK = GoHit("GO:0007204", "positive regulation of cytosolic calcium ion concentration", "BP", 9,
             1e-40, 1.2, q_length=1e-30)  # fmt: skip


@pytest.fixture(scope="module")
def profile(shared_dir: Path) -> AaProfile:
    sequences = [r["sequence"] for r in human_proteins(shared_dir, 40)]
    codes = torch.from_numpy(residue_codes(sequences))
    cys = torch.nonzero(codes == ALPHABET.index("C")).flatten()
    every = torch.arange(len(codes))
    mass = AaMass(sequences, 2, torch.device("cpu"))
    rows = torch.cat([cys, every])
    cols = torch.cat([torch.full_like(cys, CYS), torch.full_like(every, EVERYWHERE)])
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    mass.add(range(len(sequences)), lengths, rows, cols, torch.ones(len(rows)))
    return mass.result()


def test_residue_codes_map_non_standard_letters_to_x() -> None:
    codes = residue_codes(["ACY", "uBzXw"])
    assert "".join(ALPHABET[c] for c in codes) == "ACYXXXXW"


def test_a_feature_on_every_cysteine_is_a_detector_and_composition_is_not(
    profile: AaProfile,
) -> None:
    dominance: dict[int, Dominance] = {}
    columns = profile_columns(profile, dominance)
    cys, everywhere = dominance[CYS], dominance[EVERYWHERE]
    assert (cys.letter, cys.share, cys.n_residues) == ("C", 1.0, profile.n_residues[CYS])
    assert 0 < cys.background < 0.1 and cys.is_detector
    # A feature that fires everywhere has the corpus's composition: its top type is the
    # commonest residue (Leu in human proteins) at the background share, far from a detector.
    np.testing.assert_allclose(profile.shares()[EVERYWHERE], profile.background, rtol=1e-6)
    assert everywhere.letter == "L" and everywhere.enrichment == pytest.approx(1.0)
    assert not everywhere.is_detector
    assert columns["aa_detector"] == [True, False] and columns["aa_top"] == ["C", "L"]
    assert sum(columns["aa_profile"][EVERYWHERE]) == pytest.approx(1.0, abs=1e-3)


def test_the_detector_rule_needs_share_enrichment_and_support() -> None:
    assert is_detector(DETECTOR_SHARE, 0.02, DETECTOR_MIN_RESIDUES)
    assert not is_detector(DETECTOR_SHARE - 0.01, 0.02, 1000)  # not dominant enough
    assert not is_detector(0.9, 0.5, 1000)  # a type that is half the corpus: composition
    assert not is_detector(1.0, 0.02, DETECTOR_MIN_RESIDUES - 1)  # too few residues


def test_labels_name_detectors_and_withhold_go_labels(profile: AaProfile) -> None:
    dominance: dict[int, Dominance] = {}
    profile_columns(profile, dominance)
    cys, everywhere = dominance[CYS], dominance[EVERYWHERE]
    # A detector is named by its residue even with a GO term that survives the length test.
    label = feature_label([KEPT], cys)
    assert label is not None and label.source == "auto:aa"
    assert label.text == "Cys detector (100% of activation on C)"
    protein_level = feature_label([KEPT], cys, basis="attribution")
    assert protein_level is not None and protein_level.text.endswith("of attribution on C)")
    # Not a detector: the GO term beyond length names it.
    label = feature_label([KEPT, LENGTH_EXPLAINED], everywhere)
    assert label is not None and label.source == "auto:go" and "(GO:0005886," in label.text
    # Every significant term explained by length: said so, no GO label.
    label = feature_label([LENGTH_EXPLAINED], everywhere)
    assert label is not None and label.source == "auto:no-go"
    assert label.text == "no GO hit beyond length (1 term explained by protein length)"
    label = feature_label([WEAK], everywhere)
    assert label is not None and label.source == "auto:no-go"
    assert label.text == "no strong GO hit (1 beyond length, all below 2-fold)"
    # Nothing significant and no dominant type: no label at all.
    insignificant = GoHit("GO:0005634", "nucleus", "CC", 2, 0.3, 1.5, q_length=0.5)
    assert feature_label([insignificant], everywhere) is None
    labels = auto_labels({CYS: [KEPT], EVERYWHERE: [KEPT], 5: [insignificant]}, {},
                         dominance=dominance)  # fmt: skip
    assert {f: lab.source for f, lab in labels.items()} == {CYS: "auto:aa", EVERYWHERE: "auto:go"}
