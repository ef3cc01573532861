"""Stage 1, ingest: protein files + GO ids + structures -> ``{workdir}/corpus/``.

Writes ``corpus/proteins.tsv.gz`` (row i = protein i), ``corpus/structures.json`` (chains mapped
onto corpus proteins by alignment), ``corpus/manifest.json`` (counts, skipped chains by reason) and
``corpus/DONE`` last, holding the config's hash: a rerun with the same config just loads. The
stage driver (``trainer.stage_driver``) decides, and says why it builds again; the hash stays the
marker's stamp (``fixed_stamp``) so corpora built before the driver are kept.

Selection is deterministic for a config: proteins keep their order in the input files; with
``max_proteins`` the structure-bearing proteins are kept first and the rest is a seeded sample.
Labelled structure chains that match no corpus protein are appended as proteins of their own.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.atomic_write import write_atomic
from app.stage_summaries import CorpusManifest
from trainer.corpus import (
    Corpus,
    attach_go,
    load_corpus,
    merge_corpora,
    read_fasta,
    read_protein_tsv,
    save_corpus,
)
from trainer.ingest_store import insert_structures, store_rows, structure_rows, upsert_proteins
from trainer.layout import RunLayout
from trainer.seqfiles import read_gaf
from trainer.stage_driver import StageUnit, run_unit
from trainer.structure_map import MappingRules, map_table_structures
from trainer.structures import (
    MIN_COVERAGE,
    MIN_IDENTITY,
    StructureMapping,
    TableChain,
    align_chain,
    check_alignment,
    load_structures,
    read_structure_table,
    save_structures,
    structure_chains,
    structure_format,
)

__all__ = [
    "IngestConfig",
    "StructureFile",
    "insert_structures",
    "load_structure_mappings",
    "run_ingest",
    "store_rows",
    "structure_rows",
    "upsert_proteins",
]


class StructureFile(BaseModel):
    """A user's PDB/mmCIF chain and the corpus accession it belongs to."""

    model_config = ConfigDict(extra="forbid")
    path: Path
    chain: str
    accession: str
    structure_type: str | None = None


class IngestConfig(BaseModel):
    """Every parameter of the ingest stage (its hash decides whether a rerun may resume)."""

    model_config = ConfigDict(extra="forbid")
    protein_tsvs: list[Path] = Field(default_factory=list)
    fasta: list[Path] = Field(default_factory=list)
    gaf: list[Path] = Field(default_factory=list)  # GO ids for the FASTA proteins
    structures_table: Path | None = None
    structure_files: list[StructureFile] = Field(default_factory=list)
    max_proteins: int | None = Field(default=None, ge=1)  # from the protein files; None = all
    min_length: int = Field(default=1, ge=1)
    max_length: int | None = Field(default=None, ge=1)
    seed: int = 0
    include_structure_proteins: bool = True  # keep every protein a structure maps to
    include_structure_chains: bool = True  # labelled chains matching no protein become proteins
    min_identity: float = Field(default=MIN_IDENTITY, ge=0.0, le=1.0)
    min_coverage: float = Field(default=MIN_COVERAGE, ge=0.0, le=1.0)

    @field_validator("structures_table", mode="before")
    @classmethod
    def _empty_means_none(cls, value: object) -> object:
        return None if value == "" else value  # TOML has no null: "" switches a table off

    @model_validator(mode="after")
    def _has_proteins(self) -> IngestConfig:
        if not self.protein_tsvs and not self.fasta:
            raise ValueError("give at least one protein table (protein_tsvs) or FASTA file")
        if self.gaf and not self.fasta:
            raise ValueError("gaf annotates FASTA proteins: give the fasta files too")
        return self

    def config_hash(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()

    def length_ok(self, n: int) -> bool:
        return n >= self.min_length and (self.max_length is None or n <= self.max_length)


def load_structure_mappings(workdir: Path) -> list[StructureMapping]:
    return load_structures(RunLayout(workdir).corpus.structures)


def run_ingest(workdir: Path, cfg: IngestConfig) -> Corpus:
    """Build (or, when DONE holds this config's hash, load) the corpus and its structure map."""
    files = RunLayout(workdir).corpus
    unit = StageUnit("ingest", files.done, {"config": json.loads(cfg.model_dump_json())},
                     outputs=(files.proteins, files.structures, files.manifest),
                     fixed_stamp=cfg.config_hash())  # fmt: skip
    return run_unit(unit, lambda: _build(workdir, cfg), load=lambda: load_corpus(workdir))


def _build(workdir: Path, cfg: IngestConfig) -> Corpus:
    """Every file of ``corpus/`` but its DONE (the driver writes that)."""
    files = RunLayout(workdir).corpus
    files.dir.mkdir(parents=True, exist_ok=True)
    table = read_structure_table(cfg.structures_table) if cfg.structures_table else []
    corpus, pool_accessions = select_proteins(cfg, table)
    n_from_files = len(corpus)
    counts: Counter[str] = Counter()
    mappings: list[StructureMapping] = []
    if cfg.structures_table is not None:
        rules = MappingRules(
            cfg.min_identity,
            cfg.min_coverage,
            cfg.include_structure_chains,
            cfg.min_length,
            cfg.max_length,
        )
        mappings = map_table_structures(
            corpus, table, cfg.structures_table, rules, pool_accessions, counts
        )
    mappings += map_user_structures(corpus, cfg, counts)

    save_corpus(workdir, corpus)
    save_structures(files.structures, mappings)
    manifest = {
        "config_hash": cfg.config_hash(),
        "config": json.loads(cfg.model_dump_json()),
        "n_proteins": len(corpus),
        "n_proteins_from_files": n_from_files,
        "n_structure_proteins": len(corpus) - n_from_files,
        "n_structures_mapped": len(mappings),
        "structure_counts": dict(sorted(counts.items())),
    }
    CorpusManifest.model_validate(manifest)  # the document the summary reads back
    write_atomic(files.manifest, json.dumps(manifest, indent=2))
    return corpus


def read_protein_files(cfg: IngestConfig) -> Corpus:
    """All proteins of the configured files, deduplicated by accession (first file wins)."""
    parts = [read_protein_tsv(p) for p in cfg.protein_tsvs]
    if cfg.fasta:
        fasta = merge_corpora(read_fasta(p) for p in cfg.fasta)
        for gaf in cfg.gaf:
            attach_go(fasta, read_gaf(gaf))
        parts.append(fasta)
    return merge_corpora(parts)


def select_proteins(cfg: IngestConfig, table: list[TableChain]) -> tuple[Corpus, set[str]]:
    """Length-filter, then keep structure proteins first and sample the rest with ``cfg.seed``.

    Returns the selection (in input-file order) and the accessions of every protein read.
    """
    pool = read_protein_files(cfg)
    every = set(pool.accessions)
    keep = [i for i, s in enumerate(pool.sequences) if cfg.length_ok(len(s))]
    if cfg.max_proteins is None or cfg.max_proteins >= len(keep):
        return pool.subset(keep), every
    wanted: set[str] = set()
    if cfg.include_structure_proteins:
        wanted = {row.accession for row in table if row.accession}
        wanted |= {f.accession for f in cfg.structure_files}
    must = [i for i in keep if pool.accessions[i] in wanted]
    rest = [i for i in keep if pool.accessions[i] not in wanted]
    rng = random.Random(cfg.seed)
    if len(must) >= cfg.max_proteins:
        chosen = rng.sample(must, cfg.max_proteins)
    else:
        chosen = must + rng.sample(rest, cfg.max_proteins - len(must))
    return pool.subset(sorted(chosen)), every


def map_user_structures(
    corpus: Corpus, cfg: IngestConfig, counts: Counter[str]
) -> list[StructureMapping]:
    """Map the user's own PDB/mmCIF chains; an unknown accession is a configuration error."""
    index = corpus.index()
    mappings: list[StructureMapping] = []
    for item in cfg.structure_files:
        target = index.get(item.accession)
        if target is None:
            raise ValueError(
                f"structure file {item.path}: accession {item.accession} not in corpus"
            )
        residues = structure_chains(item.path).get(item.chain)
        if residues is None:
            raise ValueError(f"structure file {item.path}: no protein chain {item.chain!r}")
        found = align_chain(residues.sequence, corpus.sequences[target])
        check_alignment(
            found, f"{item.path} chain {item.chain!r}", cfg.min_identity, cfg.min_coverage
        )
        counts["mapped:user"] += 1
        path = Path(item.path).resolve()
        mappings.append(
            StructureMapping(
                protein_index=target,
                accession=item.accession,
                file_path=str(path),
                format=structure_format(path),
                chain=item.chain,
                source="user",
                structure_type=item.structure_type,
                chain_sequence=residues.sequence,
                residue_ids=residues.residue_ids,
                sequence_positions=found.sequence_positions,
                identity=round(found.identity, 4),
                coverage=round(found.coverage, 4),
            )
        )
    return mappings
