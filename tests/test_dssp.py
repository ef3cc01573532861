"""DSSP on real structure chains, checked against independent computations and published bonds.

- Secondary structure and RSA: Biopython's own ``Bio.PDB.DSSP`` (defaults but for the Tien et
  al. table, ``acc_array="Wilke"``) on the same chain file; RSA also against Biopython's
  Shrake-Rupley surface (an independent algorithm), within a tolerance.
- Disulfides: the published bonds of bovine chymotrypsin (1-122, 42-58, 136-201, 168-182,
  191-220, chymotrypsinogen numbering) and porcine trypsin (six bonds), from the DB5.5 files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from Bio.Data.PDBData import residue_sasa_scales
from Bio.PDB import PDBParser
from Bio.PDB.DSSP import DSSP
from Bio.PDB.SASA import ShrakeRupley

from trainer.concepts.labels import Chain
from trainer.concepts.stage import _plan_batches
from trainer.concepts.structure_labels import (
    _Votes,
    collect_votes,
    protein_labels,
    protein_role,
)
from trainer.dssp import DsspError, chain_pdb_text, mkdssp_path, run_dssp
from trainer.structures import StructureMapping, map_structure_file

pytestmark = pytest.mark.skipif(
    shutil.which("mkdssp") is None, reason="mkdssp missing (make dssp installs it)"
)

CHAINS = [
    ("db5.5/1ACB_r_u.pdb.gz", "B"),  # chymotrypsin, experimental
    ("db5.5/1AVX_r_u.pdb.gz", "A"),  # trypsin, experimental
    ("db5.5/1ACB_l_u.pdb.gz", " "),  # eglin c: blank chain id
    ("graphsite_af2/1a0a_A.pdb.gz", "A"),  # AlphaFold model, all helix
    ("graphbepi_example/7s2r_A.pdb.gz", "A"),
]
CHYMOTRYPSIN_SS = {("1", "122"), ("42", "58"), ("136", "201"), ("168", "182"), ("191", "220")}
TRYPSIN_SS = {
    ("22", "157"),
    ("42", "58"),
    ("128", "232"),
    ("136", "201"),
    ("168", "182"),
    ("191", "220"),
}


@pytest.fixture(scope="module")
def structures(shared_dir: Path) -> Path:
    return shared_dir / "data" / "structures"


def _biopython(
    structures: Path, file: str, chain: str, tmp: Path
) -> tuple[str, list[float], dict[str, float]]:
    """Biopython's DSSP (ss, RSA) and Shrake-Rupley RSA on the same chain file."""
    pdb = tmp / "chain.pdb"
    pdb.write_text(chain_pdb_text(structures / file, chain))
    model = PDBParser(QUIET=True).get_structure("x", str(pdb))[0]
    dssp = DSSP(model, str(pdb), dssp="mkdssp", acc_array="Wilke")
    keys = dssp.keys()  # iterating the map itself yields residues, not keys
    ss = "".join(dssp[k][2] for k in keys)
    rsa = [float(dssp[k][3]) for k in keys]
    ShrakeRupley().compute(model, level="R")
    scale = residue_sasa_scales["Wilke"]
    sr = {
        f"{r.id[1]}{r.id[2].strip()}": r.sasa / scale.get(r.get_resname(), np.nan)
        for r in model["A"]
    }
    return ss, rsa, sr


@pytest.mark.parametrize(("file", "chain"), CHAINS)
def test_assignment_matches_biopython_and_shrake_rupley(
    structures: Path, file: str, chain: str, tmp_path: Path
) -> None:
    ours = run_dssp(structures / file, chain)
    ss, rsa, by_id = _biopython(structures, file, chain, tmp_path)
    sr = np.array([by_id[r.residue_id] for r in ours])  # DSSP skips residues without N/CA/C/O
    assert "".join(r.ss for r in ours) == ss
    ours_rsa = np.array([r.rsa for r in ours], dtype=float)
    assert np.allclose(np.minimum(ours_rsa, 1.0), rsa)  # Biopython caps RSA at 1
    known = ~np.isnan(sr)
    assert known.sum() >= 0.95 * len(ours)
    # an independent surface algorithm: close per residue, same buried/exposed call
    assert np.corrcoef(ours_rsa[known], sr[known])[0, 1] > 0.98
    assert np.abs(ours_rsa[known] - sr[known]).mean() < 0.05
    assert ((ours_rsa < 0.2) == (sr < 0.2))[known].mean() > 0.95


def test_secondary_structure_of_real_chains(structures: Path) -> None:
    helix = run_dssp(structures / "graphsite_af2/1a0a_A.pdb.gz", "A")
    assert np.mean([r.helix for r in helix]) > 0.7  # a bHLH domain: two long helices
    trypsin = run_dssp(structures / "db5.5/1AVX_r_u.pdb.gz", "A")
    assert np.mean([r.strand for r in trypsin]) > 0.3  # two beta barrels
    assert np.mean([r.helix for r in trypsin]) < 0.15


@pytest.mark.parametrize(
    ("file", "chain", "published"),
    [("db5.5/1ACB_r_u.pdb.gz", "B", CHYMOTRYPSIN_SS), ("db5.5/1AVX_r_u.pdb.gz", "A", TRYPSIN_SS)],
)
def test_disulfides_are_the_published_bonds(
    structures: Path, file: str, chain: str, published: set[tuple[str, str]]
) -> None:
    residues = run_dssp(structures / file, chain)
    bonded = {r.residue_id for r in residues if r.disulfide}
    assert bonded == {c for pair in published for c in pair}


def test_disulfides_match_the_sg_distance(structures: Path, tmp_path: Path) -> None:
    file, chain = "graphbepi_example/7s2r_A.pdb.gz", "A"
    residues = run_dssp(structures / file, chain)
    pdb = tmp_path / "c.pdb"
    pdb.write_text(chain_pdb_text(structures / file, chain))
    model = PDBParser(QUIET=True).get_structure("x", str(pdb))[0]
    sg = [(str(r.id[1]), r["SG"].coord) for r in model["A"] if r.get_resname() == "CYS"]
    geometric = {
        x
        for i, (a, u) in enumerate(sg)
        for b, v in sg[i + 1 :]
        if np.linalg.norm(u - v) <= 2.5
        for x in (a, b)
    }
    assert geometric and {r.residue_id for r in residues if r.disulfide} == geometric


def test_missing_mkdssp_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DsspError, match="apt-get install dssp"):
        mkdssp_path()


def test_missing_chain_is_a_clear_error(structures: Path) -> None:
    with pytest.raises(DsspError, match="no ATOM records for chain 'Q'"):
        run_dssp(structures / "graphsite_af2/1a0a_A.pdb.gz", "Q")


def test_labels_reach_protein_positions_through_the_alignment(
    structures: Path, tmp_path: Path
) -> None:
    """Chymotrypsin's chain on a protein with a 10-residue N-terminal extension: the labels
    land 10 positions on, and uncovered positions carry no label."""
    path = structures / "db5.5/1ACB_r_u.pdb.gz"
    residues, found = map_structure_file(path, "B", "MKKLLLLAAA" + _chain_sequence(path, "B"))
    protein = "MKKLLLLAAA" + residues.sequence
    mapping = StructureMapping(
        0, "P00766", str(path), "pdb", "B", "db5.5", "experimental", residues.sequence,
        residues.residue_ids, found.sequence_positions, found.identity, found.coverage,
    )  # fmt: skip
    counts: dict[str, int] = {}
    votes = collect_votes([mapping], [protein], tmp_path, counts)
    mask, labels = protein_labels(votes[0])
    assert counts == {"dssp_chains": 1} and not mask[:10].any() and mask[10:].all()
    dssp = run_dssp(path, "B")
    assert labels["dssp_disulfide"][10:].tolist() == [r.disulfide for r in dssp]
    assert labels["dssp_helix"][10:].tolist() == [r.helix for r in dssp]
    assert (labels["dssp_buried"] ^ labels["dssp_exposed"])[mask].all()
    assert {k: int(v.sum()) for k, v in labels.items()}["dssp_disulfide"] == 10
    # a cached second pass gives the same votes without running mkdssp
    again = collect_votes([mapping], [protein], tmp_path, {})
    assert np.array_equal(again[0].helix, votes[0].helix)


def _chain_sequence(path: Path, chain: str) -> str:
    from trainer.structures import structure_chains

    return structure_chains(path)[chain].sequence


def test_majority_over_chains() -> None:
    v = _Votes.empty(4)
    v.covered[:] = [0, 1, 2, 3]
    v.helix[:] = [0, 1, 1, 2]
    v.rsa_sum[:] = [0, 0.1, 0.5, 0.3]
    v.rsa_n[:] = [0, 1, 2, 3]
    mask, labels = protein_labels(v)
    assert mask.tolist() == [False, True, True, True]
    assert labels["dssp_helix"].tolist() == [False, True, False, True]  # 1 of 2 is no majority
    assert labels["dssp_buried"].tolist() == [False, True, False, True]
    assert labels["dssp_exposed"].tolist() == [False, False, True, False]


def test_split_is_by_accession_and_deterministic(shared_dir: Path) -> None:
    import csv

    with open(shared_dir / "data" / "structures" / "structures.tsv", newline="") as handle:
        accessions = {
            r["sprot2014_accession"]
            for r in csv.DictReader(handle, delimiter="\t")
            if r["sprot2014_accession"]
        }
    roles = [protein_role(a, 0.3) for a in sorted(accessions)]
    assert roles == [protein_role(a, 0.3) for a in sorted(accessions)]
    assert 0.25 < roles.count("test") / len(roles) < 0.35


def test_masked_positions_are_encoded_but_not_scored() -> None:
    seq = "MKTAYIAKQRQISFVKSHFSRQ"
    mask = np.zeros(len(seq), dtype=bool)
    mask[3:8] = mask[12:20] = True
    labels = np.zeros(len(seq), dtype=bool)
    labels[7] = labels[12] = True  # one site each side of the gap, not one site
    chain = Chain("P1", seq, labels, "train", ("x",), mask)
    from trainer.concepts.labels import ConceptSet

    concept = ConceptSet("c", "c", "s", Path("c"), [chain], [])
    (batch,) = _plan_batches([concept], 4096)
    (group,) = batch.groups
    assert batch.sequences == [seq]
    assert group.rows.tolist() == [*range(3, 8), *range(12, 20)]
    assert group.labels.tolist() == labels[mask].tolist()
    assert group.chain_starts.tolist() == [0, 5]
    assert chain.n_labelled == 13
