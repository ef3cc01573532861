"""Structure chains and their residue-by-residue mapping onto protein sequences.

A chain's residues are read from its ATOM records (first model; the 20 standard amino acids plus
selenomethionine as M; waters and ligands skipped) and its one-letter sequence is *aligned* to the
protein sequence. Author residue numbers are never trusted as sequence positions: experimental
chains start anywhere, skip unresolved loops and carry insertion codes ("52A").
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from Bio.Align import PairwiseAligner
from Bio.Data.PDBData import protein_letters_3to1
from Bio.PDB import MMCIFParser, PDBParser
from Bio.PDB.Structure import Structure

from app.atomic_write import write_atomic
from trainer.validate import IngestError, where

STANDARD_3TO1 = {k.upper(): v for k, v in protein_letters_3to1.items()}
# Ambiguous/rare residues written as ATOM records keep their one-letter code; MSE (a HETATM in
# most files) is selenomethionine, i.e. M in the protein sequence.
ATOM_EXTRA_3TO1 = {"ASX": "B", "GLX": "Z", "SEC": "U", "PYL": "O"}
NONSTANDARD_3TO1 = {"MSE": "M"}
MIN_IDENTITY = 0.9
MIN_COVERAGE = 0.5


class StructureMappingError(ValueError):
    """A chain that cannot be mapped onto the protein (missing, or aligns too poorly)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ChainResidues:
    """One chain's residues in ATOM order: author ids ("52A") and one-letter codes."""

    chain: str
    residue_ids: list[str]
    sequence: str


@dataclass
class ChainAlignment:
    """0-based protein position per chain residue (-1: not aligned), identity and coverage."""

    sequence_positions: list[int]
    identity: float  # identical pairs / aligned pairs
    coverage: float  # aligned chain residues / chain residues


@dataclass
class StructureMapping:
    """One structure chain mapped onto corpus protein ``protein_index`` (the structures.json row)."""

    protein_index: int
    accession: str
    file_path: str
    format: str
    chain: str
    source: str | None
    structure_type: str | None
    chain_sequence: str
    residue_ids: list[str]
    sequence_positions: list[int]
    identity: float
    coverage: float


def structure_format(path: Path) -> str:
    """``pdb`` or ``mmcif``, from the name (.cif/.mmcif, optionally .gz) or the first line."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".cif", ".mmcif")):
        return "mmcif"
    if name.endswith((".pdb", ".ent")):
        return "pdb"
    with _open(path) as handle:
        return "mmcif" if handle.readline().startswith("data_") else "pdb"


def _open(path: Path) -> IO[str]:
    with open(path, "rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt") if gz else open(path)


def read_structure(path: Path | str) -> Structure:
    """Parse a PDB or mmCIF file (gz or plain) with Biopython."""
    path = Path(path)
    fmt = structure_format(path)
    parser = MMCIFParser(QUIET=True) if fmt == "mmcif" else PDBParser(QUIET=True)
    try:
        with _open(path) as handle:
            return parser.get_structure(path.stem, handle)
    except Exception as exc:  # Biopython raises many types on malformed files
        raise IngestError(f"{path}: cannot parse as {fmt}: {exc}") from exc


def structure_chains(path: Path | str) -> dict[str, ChainResidues]:
    """Every chain of the first model, as residues in ATOM order; chains with none are left out."""
    structure = read_structure(path)
    model = next(iter(structure), None)
    out: dict[str, ChainResidues] = {}
    if model is None:
        return out
    for chain in model:
        ids: list[str] = []
        letters: list[str] = []
        for residue in chain:
            hetflag, number, icode = residue.id
            name = residue.get_resname().strip().upper()
            if name in NONSTANDARD_3TO1:
                letter = NONSTANDARD_3TO1[name]
            elif hetflag == " " and name in STANDARD_3TO1:
                letter = STANDARD_3TO1[name]
            elif hetflag == " " and name in ATOM_EXTRA_3TO1:
                letter = ATOM_EXTRA_3TO1[name]
            else:  # water, ligand, modified residue
                continue
            ids.append(f"{number}{icode.strip()}")
            letters.append(letter)
        if ids:
            out[chain.id] = ChainResidues(chain.id, ids, "".join(letters))
    return out


def _aligner() -> PairwiseAligner:
    # Near-identical sequences: plain match/mismatch scoring, affine gaps, free end gaps (a chain
    # is usually a fragment of the protein and may carry an expression tag of its own).
    aligner = PairwiseAligner(mode="global", match_score=5.0, mismatch_score=-4.0)
    aligner.open_gap_score = -10.0
    aligner.extend_gap_score = -0.5
    aligner.end_gap_score = 0.0
    return aligner


_ALIGNER = _aligner()


def align_chain(chain_sequence: str, protein_sequence: str) -> ChainAlignment:
    """Align the chain onto the protein; aligned pairs (matches and substitutions) get positions."""
    positions = [-1] * len(chain_sequence)
    if not chain_sequence or not protein_sequence:
        return ChainAlignment(positions, 0.0, 0.0)
    alignment = _ALIGNER.align(protein_sequence, chain_sequence)[0]
    identical = aligned = 0
    for (t0, t1), (q0, _q1) in zip(*alignment.aligned.tolist(), strict=True):
        for k in range(t1 - t0):
            positions[q0 + k] = t0 + k
            identical += protein_sequence[t0 + k] == chain_sequence[q0 + k]
        aligned += t1 - t0
    identity = identical / aligned if aligned else 0.0
    return ChainAlignment(positions, identity, aligned / len(chain_sequence))


def check_alignment(
    found: ChainAlignment, at: str, min_identity: float, min_coverage: float
) -> ChainAlignment:
    if found.identity < min_identity:
        raise StructureMappingError(
            "low_identity", f"{at}: identity {found.identity:.1%} < {min_identity:.0%}"
        )
    if found.coverage < min_coverage:
        raise StructureMappingError(
            "low_coverage", f"{at}: coverage {found.coverage:.1%} < {min_coverage:.0%}"
        )
    return found


def map_structure_file(
    path: Path | str,
    chain: str,
    protein_sequence: str,
    *,
    min_identity: float = MIN_IDENTITY,
    min_coverage: float = MIN_COVERAGE,
) -> tuple[ChainResidues, ChainAlignment]:
    """Map ``chain`` of any PDB/mmCIF file onto a protein sequence; refuse a poor alignment."""
    path = Path(path)
    chains = structure_chains(path)
    if chain not in chains:
        raise StructureMappingError(
            "chain_missing",
            f"{path}: no protein chain {chain!r} (chains: {', '.join(sorted(chains)) or 'none'})",
        )
    residues = chains[chain]
    found = align_chain(residues.sequence, protein_sequence)
    return residues, check_alignment(found, f"{path} chain {chain!r}", min_identity, min_coverage)


# -- the structures table (shared/data/structures/structures.tsv) ---------------------------------


@dataclass(frozen=True)
class TableChain:
    """One row of the structures table: which chain, and what it is known to map to."""

    line: int
    file: str
    source: str
    pdb_id: str
    chain: str
    accession: str | None  # Swiss-Prot (blastp hit) or the given UniProt accession
    chain_sequence: str
    structure_type: str | None
    represents: str | None
    label_matches: str
    hint: tuple[int, int, int, int] | None  # chain_from, chain_to, uniprot_from, uniprot_to

    @property
    def own_accession(self) -> str:
        """The accession a labelled chain gets when it matches no corpus protein."""
        chain = self.chain.strip() or "-"
        return f"PDB:{self.represents or f'{self.pdb_id}_{chain}'}"


TABLE_COLUMNS = ("file", "source", "chain", "chain_sequence")


def read_structure_table(path: Path | str) -> list[TableChain]:
    """Rows of ``structures.tsv``; the ``sprot2014_*`` alignment ranges are kept as hints only."""
    path = Path(path)
    out: list[TableChain] = []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, [])
        missing = [c for c in TABLE_COLUMNS if c not in header]
        if missing:
            raise IngestError(f"{where(path, 1)}: header lacks column(s) {', '.join(missing)}")
        for line, values in enumerate(reader, start=2):
            if not values:
                continue
            if len(values) != len(header):
                raise IngestError(
                    f"{where(path, line)}: expected {len(header)} columns, got {len(values)}"
                )
            row = dict(zip(header, values, strict=True))
            out.append(_table_chain(row, line, path))
    return out


def _table_chain(row: dict[str, str], line: int, path: Path) -> TableChain:
    hint = None
    keys = ("chain_from", "chain_to", "uniprot_from", "uniprot_to")
    if all(row.get(k, "").strip() for k in keys):
        try:
            a, b, c, d = (int(row[k]) for k in keys)
        except ValueError as exc:
            raise IngestError(f"{where(path, line)}: non-integer alignment range: {exc}") from exc
        hint = (a, b, c, d)
    accession = row.get("sprot2014_accession", "").strip() or row.get("uniprot_accession", "")
    return TableChain(
        line=line,
        file=row["file"],
        source=row["source"],
        pdb_id=row.get("pdb_id_or_afdb_id", "").strip(),
        chain=row["chain"],  # may be a blank chain id: do not strip
        accession=accession.strip() or None,
        chain_sequence=row["chain_sequence"].strip(),
        structure_type=row.get("structure_type", "").strip() or None,
        represents=row.get("represents_pdb_chain", "").strip() or None,
        label_matches=row.get("residue_label_matches", "").strip(),
        hint=hint,
    )


# -- corpus/structures.json ------------------------------------------------------------------------


def save_structures(path: Path, mappings: list[StructureMapping]) -> None:
    write_atomic(path, json.dumps([asdict(m) for m in mappings], separators=(",", ":")))


def load_structures(path: Path) -> list[StructureMapping]:
    rows: list[dict[str, Any]] = json.loads(Path(path).read_text())
    return [StructureMapping(**row) for row in rows]
