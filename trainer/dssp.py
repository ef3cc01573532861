"""Secondary structure, solvent accessibility and disulfides of one structure chain, by DSSP.

Runs Debian's ``mkdssp`` (DSSP 4.x, Kabsch & Sander) on one chain *on its own*: the protein
language model sees one sequence, so a residue buried only by a partner chain in a complex counts
as exposed, and only intra-chain disulfides are found. mkdssp 4 refuses our PDB files as they
are (no HEADER record: it then tries mmCIF; a blank chain id fails its mmCIF validation), so the
chain's ATOM records (plus selenomethionine HETATMs) of the first model are written to a temporary
file with a HEADER line and chain id ``A``. The output is parsed with Biopython's
``Bio.PDB.DSSP.make_dssp_dict``; relative accessibility divides DSSP's ASA by Tien et al. (2013)'s
theoretical maximum (Biopython's ``residue_sasa_scales["Wilke"]``).

Disulfides: DSSP writes SS-bridge partners as lower-case letters, but mkdssp 4 takes the bridges
from the file's SSBOND records (it does not find them from coordinates, as DSSP 2 did), and none
of our 2,031 files has one. So the chain's cysteine pairs with SG–SG ≤ 2.5 Å (an S–S bond is
2.05 Å) are written as SSBOND records, and the bridges are read back from DSSP's output.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from Bio.Data.PDBData import residue_sasa_scales
from Bio.PDB.DSSP import make_dssp_dict

from trainer.structures import _open, structure_format

MKDSSP = "mkdssp"
HELIX = frozenset("HGI")  # alpha, 3-10 and pi helix
STRAND = frozenset("EB")  # extended strand in a ladder, isolated beta bridge
BURIED_BELOW = 0.2  # relative solvent accessibility
SS_BOND_MAX = 2.5  # Å between the two SG atoms
MAX_ASA = residue_sasa_scales["Wilke"]  # Tien et al. 2013, theoretical
_HEADER = "HEADER    PROTEIN                                 01-JAN-00   XXXX              \n"


class DsspError(RuntimeError):
    """mkdssp is missing or failed on a file; the message says which and how to fix it."""


@dataclass(frozen=True)
class DsspResidue:
    """One residue as DSSP assigns it: ``ss`` is H G I E B T S P or '-', ``rsa`` may exceed 1."""

    residue_id: str  # author number and insertion code, as ``ChainResidues.residue_ids``
    ss: str
    acc: float
    rsa: float | None  # None for residues without a Tien et al. maximum (X, U, ...)
    disulfide: bool

    @property
    def helix(self) -> bool:
        return self.ss in HELIX

    @property
    def strand(self) -> bool:
        return self.ss in STRAND


def mkdssp_path() -> str:
    """The mkdssp executable, or a clear error saying how to install it."""
    found = shutil.which(MKDSSP)
    if found is None:
        raise DsspError(
            "mkdssp not found: structure concepts need DSSP (Debian: apt-get install dssp; "
            "`make install-dssp`), or set [concepts] structures = false"
        )
    return found


def chain_pdb_text(path: Path, chain: str) -> str:
    """The chain's ATOM records (and MSE HETATMs) of the first model, as a PDB file mkdssp reads.

    The chain id is rewritten to ``A`` (a blank id fails mkdssp's validation)."""
    if structure_format(path) != "pdb":
        raise DsspError(f"{path}: only PDB files are supported for DSSP (got mmCIF)")
    lines = [_HEADER]
    with _open(path) as handle:
        for line in handle:
            record = line[:6]
            if record == "ENDMDL":
                break
            if record != "ATOM  " and not (record == "HETATM" and line[17:20] == "MSE"):
                continue
            if (line[21] if len(line) > 21 else " ") != (chain or " ")[0]:
                continue
            lines.append(f"{line[:21]}A{line[22:].rstrip()}\n")
    if len(lines) == 1:
        raise DsspError(f"{path}: no ATOM records for chain {chain!r}")
    lines[1:1] = ssbond_records(lines[1:])
    lines.append("END\n")
    return "".join(lines)


def disulfide_pairs(atom_lines: list[str]) -> list[tuple[str, str]]:
    """Cysteine pairs (author residue ids) whose SG atoms are at most ``SS_BOND_MAX`` apart."""
    ids: list[str] = []
    coords: list[list[float]] = []
    for line in atom_lines:
        if line[17:20] == "CYS" and line[12:16].strip() == "SG" and line[16] in " A1":
            rid = f"{int(line[22:26])}{line[26].strip()}"
            if rid not in ids:
                ids.append(rid)
                coords.append([float(line[30:38]), float(line[38:46]), float(line[46:54])])
    if len(ids) < 2:
        return []
    xyz = np.asarray(coords)
    dist = np.linalg.norm(xyz[:, None, :] - xyz[None, :, :], axis=-1)
    return [
        (ids[i], ids[j])
        for i, j in zip(*np.nonzero(np.triu(dist <= SS_BOND_MAX, k=1)), strict=True)
    ]


def ssbond_records(atom_lines: list[str]) -> list[str]:
    """PDB SSBOND records (chain ``A``) for the chain's disulfides, so that mkdssp sees them."""
    out = []
    for n, (a, b) in enumerate(disulfide_pairs(atom_lines), start=1):
        na, ia = (a[:-1], a[-1]) if a[-1].isalpha() else (a, " ")
        nb, ib = (b[:-1], b[-1]) if b[-1].isalpha() else (b, " ")
        out.append(
            f"SSBOND {n:>3} CYS A {int(na):>4}{ia}   CYS A {int(nb):>4}{ib}"
            f"{'':23}1555   1555  2.05  \n"
        )
    return out


def run_dssp(path: Path | str, chain: str, *, executable: str | None = None) -> list[DsspResidue]:
    """DSSP's assignment of every residue of one chain, in DSSP's (file) order."""
    path = Path(path)
    exe = executable or mkdssp_path()
    with tempfile.TemporaryDirectory(prefix="protsae-dssp-") as tmp:
        pdb = Path(tmp) / "chain.pdb"
        out = Path(tmp) / "chain.dssp"
        text = chain_pdb_text(path, chain)
        pdb.write_text(text)
        done = subprocess.run(
            [exe, "--output-format", "dssp", str(pdb), str(out)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or not out.exists():
            message = (done.stderr or done.stdout).strip().splitlines()
            raise DsspError(
                f"{path} chain {chain!r}: mkdssp failed ({done.returncode}): "
                f"{' '.join(message[-2:]) or 'no output'}"
            )
        table, keys = make_dssp_dict(str(out))
    resnames = _residue_names(text)
    residues = []
    for key in keys:
        aa, ss, acc = table[key][:3]
        _het, number, icode = key[1]
        residue_id = f"{number}{icode.strip()}"
        name = resnames.get(residue_id, "")
        max_asa = MAX_ASA.get("MET" if name == "MSE" else name)
        residues.append(
            DsspResidue(
                residue_id=residue_id,
                ss=ss,
                acc=float(acc),
                rsa=float(acc) / max_asa if max_asa else None,
                disulfide=aa.islower(),
            )
        )
    return residues


def _residue_names(pdb_text: str) -> dict[str, str]:
    """Author residue id -> three-letter name, from the text given to mkdssp."""
    names: dict[str, str] = {}
    for line in pdb_text.splitlines():
        if line.startswith(("ATOM  ", "HETATM")):
            names.setdefault(f"{int(line[22:26])}{line[26].strip()}", line[17:20].strip())
    return names
