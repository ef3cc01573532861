"""Residue concepts a structure defines (DSSP), laid on corpus proteins through the stored alignments.

Every chain in ``corpus/structures.json`` (a structure chain aligned residue by residue onto a
corpus protein) is run through DSSP on its own (``trainer.dssp``); its residues are carried to
protein positions by the stored alignment, keeping only identical aligned pairs. A protein with
several chains takes, per position, the majority over the chains covering it (strictly more than
half for helix, strand and disulfide; the mean RSA for buried/exposed). Positions no chain covers
carry no label and are not scored (``Chain.mask``).

Concepts: ``dssp_helix`` (H, G, I), ``dssp_strand`` (E, B), ``dssp_buried`` (RSA < 0.2, Tien et
al. 2013 theoretical maximum ASA), ``dssp_exposed`` (RSA ≥ 0.2) and ``dssp_disulfide``
(cysteines DSSP pairs in an SS bridge).

Split by protein, deterministically: a protein is TEST when ``crc32(accession) mod 1000`` is
below ``1000 × test_fraction``, so all its structures, and every concept, fall on one side.

At most ``max_proteins`` proteins per side are drawn (seeded) and at most ``chains_per_protein``
chains per protein are run (best coverage first), before mkdssp runs. DSSP output is cached per (file, chain, file size) under ``{workdir}/dssp/`` so a rerun of the
stage does not run mkdssp again.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.atomic_write import write_atomic
from app.esm_window import MAX_RESIDUES
from trainer.concepts.labels import Chain, ConceptSet, Role
from trainer.dssp import BURIED_BELOW, DsspError, DsspResidue, mkdssp_path, run_dssp
from trainer.structures import StructureMapping

SOURCE = "DSSP 4 (mkdssp) on the run's structure chains, each chain alone"
STRUCTURE_CONCEPTS: dict[str, str] = {
    "dssp_helix": "Helix residues (DSSP H, G, I)",
    "dssp_strand": "Strand residues (DSSP E, B)",
    "dssp_buried": "Buried residues (relative solvent accessibility < 0.2, Tien et al. max ASA)",
    "dssp_exposed": "Exposed residues (relative solvent accessibility ≥ 0.2, Tien et al. max ASA)",
    "dssp_disulfide": "Disulfide-bonded cysteines (DSSP SS-bridge partners)",
}


def protein_role(accession: str, test_fraction: float) -> Role:
    """TEST for a fixed, name-determined share of proteins (crc32 of the accession)."""
    return "test" if zlib.crc32(accession.encode()) % 1000 < 1000 * test_fraction else "train"


def _cache_file(cache: Path, mapping: StructureMapping) -> Path:
    size = Path(mapping.file_path).stat().st_size
    key = f"{Path(mapping.file_path).resolve()}|{mapping.chain}|{size}"
    return cache / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.json"


def chain_dssp(mapping: StructureMapping, cache: Path) -> list[DsspResidue]:
    """DSSP of one mapped chain, from the cache when present."""
    path = _cache_file(cache, mapping)
    if path.exists():
        return [DsspResidue(**r) for r in json.loads(path.read_text())]
    residues = run_dssp(mapping.file_path, mapping.chain)
    write_atomic(path, json.dumps([asdict(r) for r in residues]))
    return residues


@dataclass
class _Votes:
    """Per protein position: chains covering it, and how many call it helix/strand/disulfide."""

    covered: np.ndarray
    helix: np.ndarray
    strand: np.ndarray
    disulfide: np.ndarray
    rsa_sum: np.ndarray
    rsa_n: np.ndarray

    @classmethod
    def empty(cls, n: int) -> _Votes:
        return cls(*(np.zeros(n, np.float64) for _ in range(6)))


def protein_labels(votes: _Votes) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(mask of labelled positions, labels per concept) from a protein's votes."""
    covered = votes.covered > 0
    majority = votes.covered / 2
    has_rsa = votes.rsa_n > 0
    rsa = np.divide(votes.rsa_sum, votes.rsa_n, out=np.zeros_like(votes.rsa_sum), where=has_rsa)
    labels = {
        "dssp_helix": votes.helix > majority,
        "dssp_strand": votes.strand > majority,
        "dssp_buried": has_rsa & (rsa < BURIED_BELOW),
        "dssp_exposed": has_rsa & (rsa >= BURIED_BELOW),
        "dssp_disulfide": votes.disulfide > majority,
    }
    return covered, {k: v & covered for k, v in labels.items()}


def collect_votes(
    mappings: list[StructureMapping],
    sequences: list[str],
    cache: Path,
    counts: dict[str, int],
) -> dict[int, _Votes]:
    """Run (or read) DSSP for every mapped chain and lay it on its protein's positions."""
    mkdssp_path()  # fail early, with the install hint, before any work
    votes: dict[int, _Votes] = {}
    for m in tqdm(mappings, desc="dssp", unit="chain", disable=None):
        try:
            residues = {r.residue_id: r for r in chain_dssp(m, cache)}
        except DsspError:
            counts["dssp_failed_chains"] = counts.get("dssp_failed_chains", 0) + 1
            continue
        seq = sequences[m.protein_index]
        v = votes.setdefault(m.protein_index, _Votes.empty(len(seq)))
        for rid, letter, pos in zip(
            m.residue_ids, m.chain_sequence, m.sequence_positions, strict=True
        ):
            r = residues.get(rid)
            if r is None or pos < 0 or pos >= len(seq) or seq[pos] != letter:
                continue
            v.covered[pos] += 1
            v.helix[pos] += r.helix
            v.strand[pos] += r.strand
            v.disulfide[pos] += r.disulfide and letter == "C"
            if r.rsa is not None:
                v.rsa_sum[pos] += r.rsa
                v.rsa_n[pos] += 1
        counts["dssp_chains"] = counts.get("dssp_chains", 0) + 1
    return votes


def choose_proteins(
    mappings: list[StructureMapping],
    accessions: list[str],
    sequences: list[str],
    *,
    test_fraction: float,
    max_proteins: int | None,
    seed: int,
    max_length: int,
) -> dict[int, Role]:
    """The proteins to label, with their side: every mapped protein up to ``max_length``, at
    most ``max_proteins`` per side (drawn without replacement by a seeded generator), chosen
    before DSSP runs so mkdssp runs only on what is used."""
    proteins = sorted(
        {m.protein_index for m in mappings if len(sequences[m.protein_index]) <= max_length}
    )
    rng = np.random.default_rng([seed, zlib.crc32(b"dssp")])
    chosen: dict[int, Role] = {}
    for role in ("train", "test"):
        side = [p for p in proteins if protein_role(accessions[p], test_fraction) == role]
        if max_proteins is not None and len(side) > max_proteins:
            side = [side[i] for i in np.sort(rng.choice(len(side), max_proteins, replace=False))]
        chosen.update(dict.fromkeys(side, role))  # type: ignore[arg-type]
    return chosen


def chains_to_run(
    mappings: list[StructureMapping], chosen: dict[int, Role], per_protein: int
) -> list[StructureMapping]:
    """At most ``per_protein`` chains per chosen protein: the best covering first (then the
    most identical, then table order)."""
    by_protein: dict[int, list[StructureMapping]] = {}
    for m in mappings:
        if m.protein_index in chosen:
            by_protein.setdefault(m.protein_index, []).append(m)
    out = []
    for index in sorted(by_protein):
        ranked = sorted(by_protein[index], key=lambda m: (-m.coverage, -m.identity))
        out.extend(ranked[:per_protein])
    return out


def structure_concepts(
    mappings: list[StructureMapping],
    accessions: list[str],
    sequences: list[str],
    cache: Path,
    *,
    test_fraction: float,
    max_proteins: int | None,
    chains_per_protein: int,
    seed: int,
    max_length: int = MAX_RESIDUES,
) -> list[ConceptSet]:
    """The five DSSP concepts over the chosen proteins that have a mapped structure chain."""
    chosen = choose_proteins(
        mappings,
        accessions,
        sequences,
        test_fraction=test_fraction,
        max_proteins=max_proteins,
        seed=seed,
        max_length=max_length,
    )
    counts: dict[str, int] = {"proteins_chosen": len(chosen)}
    votes = collect_votes(
        chains_to_run(mappings, chosen, chains_per_protein), sequences, cache, counts
    )
    sets = {
        name: ConceptSet(name, text, SOURCE, cache / name, [], [], counts)
        for name, text in STRUCTURE_CONCEPTS.items()
    }
    for index in sorted(votes):
        mask, labels = protein_labels(votes[index])
        if not mask.any():
            continue
        role = chosen[index]
        for name, lab in labels.items():
            chain = Chain(
                accessions[index], sequences[index], lab, role, (f"accession-hash:{role}",), mask
            )
            sets[name].chains(role).append(chain)
    for s in sets.values():
        s.counts = {**counts, "rows": len(s.train) + len(s.test)}
    return list(sets.values())
