"""The corpus: proteins in corpus order (row i = protein i everywhere downstream).

Readers validate as they go and name the file and line of the first bad record, because a silent
skip would shift every later protein index. The protein-table layout is the one of
``shared/data/proteins/*.tsv.gz`` (see SOURCES.md); FASTA and GAF parsing is in ``trainer.seqfiles``.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from app.atomic_write import atomic_file
from trainer.layout import RunLayout
from trainer.seqfiles import GafAnnotations, fasta_records, read_gaf
from trainer.validate import IngestError, check_sequence, open_text, parse_go_ids, where

TSV_COLUMNS = ("accession", "length", "go_bp", "go_mf", "go_cc", "sequence")
TAXON_BY_ORGANISM = {"Homo sapiens": 9606}  # the only organism the shipped tables name


@dataclass
class Corpus:
    """Parallel lists, one entry per protein, in corpus order."""

    accessions: list[str] = field(default_factory=list)
    sequences: list[str] = field(default_factory=list)
    names: list[str | None] = field(default_factory=list)
    genes: list[str | None] = field(default_factory=list)
    organisms: list[str | None] = field(default_factory=list)
    taxon_ids: list[int | None] = field(default_factory=list)
    go_bp: list[set[str]] = field(default_factory=list)
    go_mf: list[set[str]] = field(default_factory=list)
    go_cc: list[set[str]] = field(default_factory=list)
    pfam: list[str | None] = field(default_factory=list)
    ec: list[str | None] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.accessions)

    def append(
        self,
        accession: str,
        sequence: str,
        *,
        name: str | None = None,
        gene: str | None = None,
        organism: str | None = None,
        taxon_id: int | None = None,
        go_bp: Iterable[str] = (),
        go_mf: Iterable[str] = (),
        go_cc: Iterable[str] = (),
        pfam: str | None = None,
        ec: str | None = None,
        source: str = "",
    ) -> None:
        self.accessions.append(accession)
        self.sequences.append(sequence)
        self.names.append(name)
        self.genes.append(gene)
        self.organisms.append(organism)
        self.taxon_ids.append(taxon_id)
        self.go_bp.append(set(go_bp))
        self.go_mf.append(set(go_mf))
        self.go_cc.append(set(go_cc))
        self.pfam.append(pfam)
        self.ec.append(ec)
        self.sources.append(source)

    def go(self, aspect: str) -> list[set[str]]:
        """The GO id sets of one aspect (BP, MF or CC)."""
        return {"BP": self.go_bp, "MF": self.go_mf, "CC": self.go_cc}[aspect]

    def subset(self, indices: Iterable[int]) -> Corpus:
        """A new corpus holding the given rows, in the given order."""
        idx = list(indices)
        out = Corpus()
        for f in fields(self):
            values = getattr(self, f.name)
            setattr(out, f.name, [values[i] for i in idx])
        return out

    def index(self) -> dict[str, int]:
        return {acc: i for i, acc in enumerate(self.accessions)}


def merge_corpora(parts: Iterable[Corpus]) -> Corpus:
    """Concatenate, deduplicating by accession: the first occurrence wins, GO ids are unioned."""
    merged = Corpus()
    seen: dict[str, int] = {}
    for part in parts:
        for i, acc in enumerate(part.accessions):
            j = seen.get(acc)
            if j is None:
                seen[acc] = len(merged)
                for f in fields(merged):
                    value = getattr(part, f.name)[i]
                    getattr(merged, f.name).append(set(value) if isinstance(value, set) else value)
            else:
                merged.go_bp[j] |= part.go_bp[i]
                merged.go_mf[j] |= part.go_mf[i]
                merged.go_cc[j] |= part.go_cc[i]
    return merged


def _optional(value: str | None) -> str | None:
    return value if value else None


def read_protein_tsv(path: Path | str) -> Corpus:
    """Read a protein table (header line, tab-separated; gz or plain); duplicates merge."""
    path = Path(path)
    rows = Corpus()
    with open_text(path) as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            raise IngestError(f"{where(path, 1)}: empty file, expected a header line")
        missing = [c for c in TSV_COLUMNS if c not in header]
        if missing:
            raise IngestError(f"{where(path, 1)}: header lacks column(s) {', '.join(missing)}")
        col = {name: i for i, name in enumerate(header)}
        for row in _rows(reader, path, len(header)):
            line, values = row
            rows.append(**_tsv_record(values, col, where(path, line), path.name))
    return merge_corpora([rows])


def _rows(
    reader: Iterator[list[str]], path: Path, n_columns: int
) -> Iterator[tuple[int, list[str]]]:
    for line, values in enumerate(reader, start=2):
        if not values:
            continue
        if len(values) != n_columns:
            raise IngestError(
                f"{where(path, line)}: expected {n_columns} tab-separated columns, got {len(values)}"
            )
        yield line, values


def _tsv_record(values: list[str], col: dict[str, int], at: str, source: str) -> dict[str, Any]:
    def get(name: str) -> str:
        i = col.get(name)
        return values[i].strip() if i is not None else ""

    accession = get("accession")
    if not accession:
        raise IngestError(f"{at}: empty accession")
    sequence = get("sequence")
    check_sequence(sequence, at)
    length = get("length")
    if length and (not length.isdigit() or int(length) != len(sequence)):
        raise IngestError(
            f"{at}: length column says {length!r} but the sequence has {len(sequence)} residues"
        )
    organism = _optional(get("organism"))
    return {
        "accession": accession,
        "sequence": sequence,
        "name": _optional(get("protein_name")),
        "gene": _optional(get("gene_symbol")),
        "organism": organism,
        "taxon_id": TAXON_BY_ORGANISM.get(organism or ""),
        "go_bp": parse_go_ids(get("go_bp"), at, "go_bp"),
        "go_mf": parse_go_ids(get("go_mf"), at, "go_mf"),
        "go_cc": parse_go_ids(get("go_cc"), at, "go_cc"),
        "pfam": _optional(get("pfam")),
        "ec": _optional(get("ec")),
        "source": source,
    }


# -- the corpus on disk: corpus/proteins.tsv.gz, row i = protein i --------------------------------

SAVED_COLUMNS = (
    "accession", "name", "gene", "organism", "taxon_id", "go_bp", "go_mf", "go_cc", "pfam", "ec",
    "source", "length", "sequence",
)  # fmt: skip


def save_corpus(workdir: Path, corpus: Corpus) -> Path:
    """Write ``corpus/proteins.tsv.gz`` (atomically: a temporary file renamed into place)."""
    path = RunLayout(workdir).corpus.proteins
    with atomic_file(path) as raw, gzip.open(raw, "wt", encoding="utf-8", newline="",
                                             compresslevel=3) as handle:  # fmt: skip
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
        writer.writerow(SAVED_COLUMNS)
        for i, acc in enumerate(corpus.accessions):
            writer.writerow(
                [
                    acc,
                    corpus.names[i] or "",
                    corpus.genes[i] or "",
                    corpus.organisms[i] or "",
                    "" if corpus.taxon_ids[i] is None else corpus.taxon_ids[i],
                    ";".join(sorted(corpus.go_bp[i])),
                    ";".join(sorted(corpus.go_mf[i])),
                    ";".join(sorted(corpus.go_cc[i])),
                    corpus.pfam[i] or "",
                    corpus.ec[i] or "",
                    corpus.sources[i],
                    len(corpus.sequences[i]),
                    corpus.sequences[i],
                ]
            )
    return path


def load_corpus(workdir: Path) -> Corpus:
    """Read back what ``save_corpus`` wrote, in the same order."""
    path = RunLayout(workdir).corpus.proteins
    corpus = Corpus()
    with open_text(path) as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or tuple(header) != SAVED_COLUMNS:
            raise IngestError(f"{where(path, 1)}: not a saved corpus (unexpected header)")
        for line, v in _rows(reader, path, len(SAVED_COLUMNS)):
            at = where(path, line)
            corpus.append(
                v[0],
                v[12],
                name=_optional(v[1]),
                gene=_optional(v[2]),
                organism=_optional(v[3]),
                taxon_id=int(v[4]) if v[4] else None,
                go_bp=parse_go_ids(v[5], at, "go_bp"),
                go_mf=parse_go_ids(v[6], at, "go_mf"),
                go_cc=parse_go_ids(v[7], at, "go_cc"),
                pfam=_optional(v[8]),
                ec=_optional(v[9]),
                source=v[10],
            )
    return corpus


def read_fasta(path: Path | str) -> Corpus:
    """Proteins from a FASTA file (gz or plain), UniProt-style or plain ``>id description`` headers."""
    corpus = Corpus()
    for record in fasta_records(Path(path)):
        corpus.append(**record)
    return merge_corpora([corpus])


def attach_go(corpus: Corpus, annotations: GafAnnotations) -> int:
    """Union GAF GO ids into the corpus (by accession); returns how many proteins gained any."""
    gained = 0
    for i, acc in enumerate(corpus.accessions):
        ann = annotations.get(acc)
        if ann is None:
            continue
        gained += 1
        corpus.go_bp[i] |= ann["BP"]
        corpus.go_mf[i] |= ann["MF"]
        corpus.go_cc[i] |= ann["CC"]
    return gained


__all__ = [
    "Corpus",
    "IngestError",
    "attach_go",
    "load_corpus",
    "merge_corpora",
    "read_fasta",
    "read_gaf",
    "read_protein_tsv",
    "save_corpus",
]
