"""FASTA proteins and GAF 2.x GO annotations, for corpora that do not come as protein tables.

Hand-rolled rather than ``Bio.SeqIO`` because errors must name the line of the bad record, and
SeqIO does not track lines.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from trainer.validate import BAD_RESIDUE, GO_ID, IngestError, check_sequence, open_text, where

_UNIPROT = re.compile(r"^(?:sp|tr)\|([^|\s]+)\|(\S+)\s*(.*)$")
_FIELD = re.compile(r"\s(OS|OX|GN|PE|SV)=")
GAF_ASPECTS = {"P": "BP", "F": "MF", "C": "CC"}
GafAnnotations = dict[str, dict[str, set[str]]]


def parse_fasta_header(header: str) -> dict[str, Any]:
    """``sp|P04637|P53_HUMAN Cellular tumor antigen p53 OS=Homo sapiens OX=9606 GN=TP53`` or
    ``id free text`` -> accession, name, gene, organism, taxon_id."""
    m = _UNIPROT.match(header)
    if m is None:
        ident, _, desc = header.partition(" ")
        return {"accession": ident, "name": desc.strip() or None}
    accession, _entry, desc = m.groups()
    parts = _FIELD.split(" " + desc)
    name = parts[0].strip() or None
    tags = dict(zip(parts[1::2], (p.strip() for p in parts[2::2]), strict=True))
    taxon = tags.get("OX", "")
    return {
        "accession": accession,
        "name": name,
        "gene": tags.get("GN") or None,
        "organism": tags.get("OS") or None,
        "taxon_id": int(taxon) if taxon.isdigit() else None,
    }


def fasta_records(path: Path) -> list[dict[str, Any]]:
    """One dict per FASTA record (Corpus.append keywords); residues upper-cased, whitespace dropped."""
    records: list[dict[str, Any]] = []
    header: dict[str, Any] | None = None
    header_line = 0
    chunks: list[str] = []

    def flush() -> None:
        if header is None:
            return
        seq = "".join(chunks)
        if seq.endswith("*"):  # a stop codon written by translators
            seq = seq[:-1]
        check_sequence(seq, where(path, header_line))
        records.append({**header, "sequence": seq, "source": path.name})

    with open_text(path) as handle:
        for line_no, raw in enumerate(handle, start=1):
            line = raw.strip()
            if line.startswith(">"):
                flush()
                header_line, chunks = line_no, []
                header = parse_fasta_header(line[1:].strip())
                if not header["accession"]:
                    raise IngestError(f"{where(path, line_no)}: FASTA header without an identifier")
            elif line and not line.startswith(";"):
                if header is None:
                    raise IngestError(
                        f"{where(path, line_no)}: sequence data before any '>' header"
                    )
                residues = "".join(line.split()).upper()
                bad = BAD_RESIDUE.search(residues.rstrip("*"))
                if bad is not None:
                    pos = sum(map(len, chunks)) + bad.start() + 1
                    raise IngestError(
                        f"{where(path, line_no)}: sequence has invalid character "
                        f"{bad.group()!r} at position {pos}"
                    )
                chunks.append(residues)
        flush()
    if not records:
        raise IngestError(f"{where(path, 1)}: no FASTA records")
    return records


def read_gaf(path: Path | str) -> GafAnnotations:
    """GO ids per DB object id from a GAF 2.x file; NOT-qualified rows are skipped."""
    path = Path(path)
    found: GafAnnotations = {}
    with open_text(path) as handle:
        for line_no, raw in enumerate(handle, start=1):
            line = raw.rstrip("\r\n")
            if not line or line.startswith("!"):
                continue
            cols = line.split("\t")
            at = where(path, line_no)
            if not 15 <= len(cols) <= 17:
                raise IngestError(
                    f"{at}: GAF rows have 15-17 tab-separated columns, got {len(cols)}"
                )
            obj, qualifier, go_id, aspect = cols[1].strip(), cols[3], cols[4].strip(), cols[8]
            if not obj:
                raise IngestError(f"{at}: empty DB Object ID (column 2)")
            if not GO_ID.fullmatch(go_id):
                raise IngestError(f"{at}: column 5: {go_id!r} is not a GO id (GO:nnnnnnn)")
            if aspect.strip() not in GAF_ASPECTS:
                raise IngestError(f"{at}: column 9: aspect {aspect!r} is not P, F or C")
            if "NOT" in qualifier.split("|"):
                continue
            per_obj = found.setdefault(obj, {"BP": set(), "MF": set(), "CC": set()})
            per_obj[GAF_ASPECTS[aspect.strip()]].add(go_id)
    return found
