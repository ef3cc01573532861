"""Structure chains from real PDB files, mapped onto Swiss-Prot sequences by alignment."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
from Bio.PDB import MMCIFIO

from trainer.corpus import Corpus, read_protein_tsv
from trainer.structures import (
    StructureMappingError,
    TableChain,
    align_chain,
    map_structure_file,
    read_structure,
    read_structure_table,
    structure_chains,
)
from trainer.validate import IngestError

STRUCTURES = Path("data/structures")


@pytest.fixture(scope="module")
def structure_proteins(shared_dir: Path) -> Corpus:
    return read_protein_tsv(shared_dir / "data/proteins/structure_proteins_sprot2014.tsv.gz")


@pytest.fixture(scope="module")
def table(shared_dir: Path) -> dict[tuple[str, str], TableChain]:
    rows = read_structure_table(shared_dir / STRUCTURES / "structures.tsv")
    return {(r.file, r.chain): r for r in rows}


def _sequence(corpus: Corpus, accession: str) -> str:
    return corpus.sequences[corpus.index()[accession]]


def test_chain_residues_match_the_table(
    shared_dir: Path, table: dict[tuple[str, str], TableChain]
) -> None:
    """Residues come from ATOM records of the first model; MSE counts as M; ligands skipped."""
    for file, chain in [
        ("db5.5/1PPE_r_b.pdb.gz", "E"),
        ("db5.5/1D6R_r_u.pdb.gz", " "),  # blank chain id
        ("db5.5/1JK9_r_u.pdb.gz", "A"),  # selenomethionine (HETATM MSE)
        ("graphsite_af2/1a0a_A.pdb.gz", "A"),
    ]:
        residues = structure_chains(shared_dir / STRUCTURES / file)[chain]
        assert residues.sequence == table[(file, chain)].chain_sequence, file
        assert len(residues.residue_ids) == len(residues.sequence)


def test_experimental_chain_with_insertion_codes_maps_by_alignment(
    shared_dir: Path, structure_proteins: Corpus, table: dict[tuple[str, str], TableChain]
) -> None:
    """Trypsin 1PPE chain E: chymotrypsinogen numbering starts at 16 and has insertion codes."""
    protein = _sequence(structure_proteins, "P00760")
    residues, found = map_structure_file(
        shared_dir / STRUCTURES / "db5.5/1PPE_r_b.pdb.gz", "E", protein
    )
    ids, pos = residues.residue_ids, found.sequence_positions
    assert ids[0] == "16"
    assert any(not rid[-1].isdigit() for rid in ids), "expected insertion codes, e.g. 184A"
    # The table's blastp hint: chain residue 1 is Swiss-Prot residue 24 (not residue 16).
    row = table[("db5.5/1PPE_r_b.pdb.gz", "E")]
    assert row.hint is not None
    assert pos[row.hint[0] - 1] == row.hint[2] - 1 == 23
    aligned = [p for p in pos if p >= 0]
    assert aligned == sorted(set(aligned)), "positions must increase strictly"
    # Residue numbers are not positions: chymotrypsin numbering skips and inserts.
    assert (
        sum(
            int("".join(c for c in r if c.isdigit())) - 1 != p
            for r, p in zip(ids, pos, strict=True)
        )
        > 100
    )
    matches = sum(residues.sequence[i] == protein[p] for i, p in enumerate(pos) if p >= 0)
    assert matches / len(aligned) == pytest.approx(found.identity)
    assert found.identity >= 0.99 and found.coverage == 1.0
    # A residue with an insertion code follows its predecessor in the sequence.
    k = next(i for i, r in enumerate(ids) if not r[-1].isdigit())
    assert pos[k] == pos[k - 1] + 1


def test_af2_chain_maps_with_the_swissprot_offset(
    shared_dir: Path, structure_proteins: Corpus, table: dict[tuple[str, str], TableChain]
) -> None:
    """GraphSite 1a0a_A (AF2 model numbered from 1) is residues 251-312 of PHO4 (P07270)."""
    row = table[("graphsite_af2/1a0a_A.pdb.gz", "A")]
    assert row.accession == "P07270" and row.hint == (2, 63, 251, 312)
    protein = _sequence(structure_proteins, "P07270")
    residues, found = map_structure_file(shared_dir / STRUCTURES / row.file, "A", protein)
    assert residues.residue_ids[:2] == ["1", "2"]
    assert found.sequence_positions[1] == 250
    assert found.sequence_positions[-1] == 311
    for i, p in enumerate(found.sequence_positions):
        if p >= 0 and i >= 1:
            assert p == 249 + i
    assert found.identity >= 0.95


def test_mmcif_gives_the_same_chain_as_pdb(
    tmp_path: Path, shared_dir: Path, structure_proteins: Corpus
) -> None:
    """The same real entry written as mmCIF (plain and gz) parses to the same residues."""
    src = shared_dir / STRUCTURES / "db5.5/1JK9_r_u.pdb.gz"
    cif = tmp_path / "1jk9.cif"
    io = MMCIFIO()
    io.set_structure(read_structure(src))
    io.save(str(cif))
    with open(cif, "rb") as plain, gzip.open(tmp_path / "1jk9.cif.gz", "wb") as packed:
        shutil.copyfileobj(plain, packed)
    want = structure_chains(src)["A"]
    for path in (cif, tmp_path / "1jk9.cif.gz"):
        got = structure_chains(path)["A"]
        assert got.sequence == want.sequence and got.residue_ids == want.residue_ids
    protein = _sequence(structure_proteins, "P40202")
    _, found = map_structure_file(tmp_path / "1jk9.cif.gz", "A", protein)
    assert found.identity == 1.0 and found.coverage == 1.0


def test_wrong_protein_or_chain_is_refused(shared_dir: Path, structure_proteins: Corpus) -> None:
    path = shared_dir / STRUCTURES / "db5.5/1PPE_r_b.pdb.gz"
    with pytest.raises(StructureMappingError) as err:
        map_structure_file(path, "E", _sequence(structure_proteins, "P07270"))
    assert err.value.reason in {"low_identity", "low_coverage"}
    with pytest.raises(StructureMappingError) as err:
        map_structure_file(path, "Q", _sequence(structure_proteins, "P00760"))
    assert err.value.reason == "chain_missing"


def test_alignment_skips_an_unresolved_loop(structure_proteins: Corpus) -> None:
    """Removing a stretch from a real sequence leaves a jump in positions, not a shift."""
    protein = _sequence(structure_proteins, "P07270")
    chain = protein[100:150] + protein[170:230]
    found = align_chain(chain, protein)
    assert found.sequence_positions == list(range(100, 150)) + list(range(170, 230))
    assert found.identity == 1.0 and found.coverage == 1.0


def test_malformed_structure_table_names_the_line(tmp_path: Path, shared_dir: Path) -> None:
    lines = (shared_dir / STRUCTURES / "structures.tsv").read_text().splitlines()
    bad = tmp_path / "structures.tsv"
    bad.write_text("\n".join([*lines[:5], lines[5].rsplit("\t", 2)[0], *lines[6:8]]) + "\n")
    with pytest.raises(IngestError, match=r"structures\.tsv:6: expected \d+ columns"):
        read_structure_table(bad)
