"""Mapping the structures table's chains onto a corpus, residue by residue.

A chain goes to the corpus protein the table names (Swiss-Prot blastp hit or given UniProt
accession) and is aligned to it. Chains with residue labels and no protein of their own enter the
corpus as ``PDB:{represents_pdb_chain}`` proteins (sequence from the structure). That id is not
unique in the table (Docking Benchmark receptor and ligand files both have a chain ``A``), so the
chain whose labels agree best with its sequence defines the protein, and a chain that does not
align to it becomes a protein of its own, named after its file.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from trainer.corpus import Corpus
from trainer.structures import (
    ChainAlignment,
    ChainResidues,
    StructureMapping,
    StructureMappingError,
    TableChain,
    align_chain,
    check_alignment,
    structure_chains,
    structure_format,
)

_DIFFERS = re.compile(r"differs\(([0-9.]+)\)")


@dataclass(frozen=True)
class MappingRules:
    min_identity: float
    min_coverage: float
    include_structure_chains: bool  # labelled chains matching no protein become proteins
    min_length: int = 1
    max_length: int | None = None

    def length_ok(self, n: int) -> bool:
        return n >= self.min_length and (self.max_length is None or n <= self.max_length)


def label_agreement(label_matches: str) -> float:
    """How well a chain's sequence agrees with its best label set: exact 3, containment 2, else
    the difflib ratio the table records."""
    best = 0.0
    for entry in label_matches.split(";"):
        kind = entry.rsplit(":", 1)[-1]
        m = _DIFFERS.fullmatch(kind)
        best = max(best, 3.0 if kind == "exact" else float(m.group(1)) if m else 2.0)
    return best


def _mapping(
    corpus: Corpus,
    target: int,
    path: Path,
    row: TableChain,
    res: ChainResidues,
    found: ChainAlignment,
) -> StructureMapping:
    return StructureMapping(
        protein_index=target,
        accession=corpus.accessions[target],
        file_path=str(path),
        format=structure_format(path),
        chain=row.chain,
        source=row.source,
        structure_type=row.structure_type,
        chain_sequence=res.sequence,
        residue_ids=res.residue_ids,
        sequence_positions=found.sequence_positions,
        identity=round(found.identity, 4),
        coverage=round(found.coverage, 4),
    )


def map_table_structures(
    corpus: Corpus,
    table: list[TableChain],
    table_path: Path,
    rules: MappingRules,
    pool_accessions: set[str],
    counts: Counter[str],
) -> list[StructureMapping]:
    """Map the table's chains (in table order); appends structure-only proteins to ``corpus``.

    ``pool_accessions``: every protein the input files hold, selected or not; a chain whose
    protein exists but was not selected is skipped rather than duplicated as a PDB protein.
    """
    base = table_path.resolve().parent
    index = corpus.index()
    own = [r for r in table if r.label_matches and r.accession not in pool_accessions]
    best: dict[str, tuple[float, int]] = {}
    for r in own:
        key = (-label_agreement(r.label_matches), r.line)
        best[r.own_accession] = min(best.get(r.own_accession, key), key)
    definers = {line for _, line in best.values()}
    order = sorted(table, key=lambda r: (r.line not in definers, r.line))
    parsed: dict[str, dict[str, ChainResidues]] = {}
    found_rows: list[tuple[int, StructureMapping]] = []
    for row in tqdm(order, desc="structures", unit="chain", disable=None):
        target = index.get(row.accession) if row.accession else None
        if target is None and row.accession in pool_accessions:
            counts["skipped:protein_not_selected"] += 1
            continue
        if target is None and not (row.label_matches and rules.include_structure_chains):
            counts["skipped:no_corpus_protein"] += 1
            continue
        path = base / row.file
        if row.file not in parsed:
            parsed[row.file] = structure_chains(path)
        res = parsed[row.file].get(row.chain)
        if res is None:
            counts["skipped:chain_missing"] += 1
            continue
        if target is None:
            target = _own_protein(corpus, index, row, res, rules, counts)
            if target is None:
                continue
        try:
            found = check_alignment(
                align_chain(res.sequence, corpus.sequences[target]),
                f"{table_path}:{row.line}",
                rules.min_identity,
                rules.min_coverage,
            )
        except StructureMappingError as exc:
            counts[f"skipped:{exc.reason}"] += 1
            continue
        if row.hint is not None and corpus.accessions[target] == row.accession:
            agrees = found.sequence_positions[row.hint[0] - 1] == row.hint[2] - 1
            counts["hint_agrees" if agrees else "hint_disagrees"] += 1
        counts[f"mapped:{row.source}"] += 1
        found_rows.append((row.line, _mapping(corpus, target, path, row, res, found)))
    return [m for _, m in sorted(found_rows, key=lambda x: x[0])]


def _own_protein(
    corpus: Corpus,
    index: dict[str, int],
    row: TableChain,
    res: ChainResidues,
    rules: MappingRules,
    counts: Counter[str],
) -> int | None:
    """The corpus row of a labelled chain's own protein, appended on first sight."""
    accession = row.own_accession
    if accession in index:
        found = align_chain(res.sequence, corpus.sequences[index[accession]])
        if found.identity >= rules.min_identity and found.coverage >= rules.min_coverage:
            return index[accession]
        stem = Path(row.file).name.split(".")[0]
        accession = f"PDB:{stem}_{row.chain.strip() or '-'}"
        counts["own_protein_split"] += 1
        if accession in index:
            return index[accession]
    if not rules.length_ok(len(res.sequence)):
        counts["skipped:length"] += 1
        return None
    label = row.represents or row.pdb_id
    corpus.append(
        accession,
        res.sequence,
        name=f"{label} ({row.structure_type or 'structure'} chain {row.chain.strip() or '-'})",
        source=f"structure:{row.source}",
    )
    index[accession] = len(corpus) - 1
    return index[accession]
