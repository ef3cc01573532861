"""Residue-level concept labels: per-chain 0/1 strings read from ``residue_annotations/*.tsv.gz``.

One file is one concept (its stem is the concept's name). Rows are checked (sequence and label
string of equal length, labels only 0/1) and a bad row is refused by file, line and chain.
Chains are assigned to TRAIN or TEST by the source's own split, never at random:

- GPSite, GLMSite: ``train`` → train, ``test`` → test.
- GraphSite: ``train_573`` → train; ``test_129``, ``test_181`` → test.
- GraphPPIS: ``Train_335`` → train; ``Test_60``, ``Test_315``, ``UBtest_31`` → test.
- ScanNet PPBS: ``validation_*`` → train (the PPBS training file is missing here, so its
  validation set stands in for it, as InterPLM picks thresholds on validation shards);
  ``test_*`` → test.
- ScanNet PIDPBS and BCE (cross-validation folds, no fixed test set): the highest-numbered fold
  present is test (PIDPBS ``fold4``, BCE ``fold5``), the other folds are train.

Identical sequences within a concept are merged into one chain: its labels are the union (OR) of
the rows' labels (e.g. one antigen bound by several antibodies), and the merged chain is TEST if
any of its rows is TEST, so no sequence is ever on both sides. Chains longer than ``max_length``
are dropped (ESM2 was trained on at most 1,022 residues) and counted.
"""

from __future__ import annotations

import csv
import gzip
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from app.esm_window import MAX_RESIDUES

Role = Literal["train", "test"]
REQUIRED_COLUMNS = ("pdb_chain", "sequence", "labels", "split")

# name -> (description, source); files not listed here get their stem and path.
KNOWN_CONCEPTS: dict[str, tuple[str, str]] = {
    "gpsite_DNA": ("DNA-binding residues (BioLiP)", "GPSite (biomed-AI/GPSite @ 58cfa4e)"),
    "gpsite_RNA": ("RNA-binding residues (BioLiP)", "GPSite (biomed-AI/GPSite @ 58cfa4e)"),
    "gpsite_PEP": ("Peptide-binding residues (BioLiP)", "GPSite (biomed-AI/GPSite @ 58cfa4e)"),
    "gpsite_PRO": ("Protein-binding residues (BioLiP)", "GPSite (biomed-AI/GPSite @ 58cfa4e)"),
    "gpsite_ATP": ("ATP-binding residues (BioLiP)", "GPSite (biomed-AI/GPSite @ 58cfa4e)"),
    "gpsite_HEM": ("Heme-binding residues (BioLiP)", "GPSite (biomed-AI/GPSite @ 58cfa4e)"),
    "gpsite_ZN": ("Zn2+-binding residues (BioLiP)", "GPSite (biomed-AI/GPSite @ 58cfa4e)"),
    "gpsite_CA": ("Ca2+-binding residues (BioLiP)", "GPSite (biomed-AI/GPSite @ 58cfa4e)"),
    "gpsite_MG": ("Mg2+-binding residues (BioLiP)", "GPSite (biomed-AI/GPSite @ 58cfa4e)"),
    "gpsite_MN": ("Mn2+-binding residues (BioLiP)", "GPSite (biomed-AI/GPSite @ 58cfa4e)"),
    "scannet_PPBS": (
        "Protein-protein binding sites",
        "ScanNet PPBS (jertubiana/ScanNet @ 7685549)",
    ),
    "scannet_PIDPBS": (
        "Binding sites of intrinsically disordered protein partners",
        "ScanNet PIDPBS (jertubiana/ScanNet @ 7685549)",
    ),
    "scannet_BCE": ("B-cell epitopes", "ScanNet BCE (jertubiana/ScanNet @ 7685549)"),
    "graphsite_DNA": (
        "DNA-binding residues (BioLiP, DNA-573/129/181)",
        "GraphSite (biomed-AI/GraphSite @ 4b66762)",
    ),
    "glmsite_DNA": (
        "DNA-binding residues (BioLiP, DNA-735/180)",
        "GLMSite (biomed-AI/nucleic-acid-binding @ 8148bb0)",
    ),
    "glmsite_RNA": (
        "RNA-binding residues (BioLiP, RNA-577/142)",
        "GLMSite (biomed-AI/nucleic-acid-binding @ 8148bb0)",
    ),
    "graphppis_PPI": (
        "Protein-protein interaction sites (Train_335 / Test_60, Test_315, UBtest_31)",
        "GraphPPIS (biomed-AI/GraphPPIS @ 6016ae5)",
    ),
}

_FOLD = re.compile(r"fold(\d+)")


class LabelFileError(ValueError):
    """A residue-annotation row that cannot be used; the message names file, line and chain."""


@dataclass(frozen=True)
class Chain:
    """One labelled chain: ``labels`` is a bool array aligned one to one with ``sequence``.

    ``mask`` (structure concepts): the positions that carry a label at all; the others are
    encoded (the model sees the whole protein) but not scored. None: every position."""

    pdb_chain: str
    sequence: str
    labels: np.ndarray
    role: Role
    source_splits: tuple[str, ...]
    mask: np.ndarray | None = None

    @property
    def n_labelled(self) -> int:
        """Residues that are scored (labelled positive or negative)."""
        return len(self.sequence) if self.mask is None else int(self.mask.sum())

    def scored_segments(self) -> list[tuple[int, int]]:
        """[start, end) runs of scored positions (the whole chain when there is no mask)."""
        if self.mask is None:
            return [(0, len(self.sequence))]
        m = np.concatenate(([False], np.asarray(self.mask, dtype=bool), [False]))
        edges = np.flatnonzero(m[1:] != m[:-1])
        return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


@dataclass
class ConceptSet:
    """All usable chains of one concept, split into train and test, plus what was dropped."""

    name: str
    description: str
    source: str
    path: Path
    train: list[Chain]
    test: list[Chain]
    counts: dict[str, int] = field(default_factory=dict)

    def chains(self, role: Role) -> list[Chain]:
        return self.train if role == "train" else self.test


def split_role(concept: str, split: str, all_splits: set[str]) -> Role | None:
    """The role of a source split (None when the rule does not know the split)."""
    low = split.lower()
    if low == "train" or low.startswith("train_") or low.startswith("validation"):
        return "train"
    if low == "test" or low.startswith("test_") or low.startswith("ubtest"):
        return "test"
    fold = _FOLD.fullmatch(low)
    if fold:
        folds = [int(m.group(1)) for s in all_splits if (m := _FOLD.fullmatch(s.lower()))]
        return "test" if int(fold.group(1)) == max(folds) else "train"
    return None


def _read_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """Rows with their 1-based file line numbers, after checking columns, lengths and alphabet."""
    rows: list[tuple[int, dict[str, str]]] = []
    with gzip.open(path, "rt", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise LabelFileError(f"{path}:1: missing column(s) {', '.join(missing)}")
        for row in reader:
            line = reader.line_num
            chain, seq, labels = row["pdb_chain"], row["sequence"] or "", row["labels"] or ""
            if len(seq) != len(labels):
                raise LabelFileError(
                    f"{path}:{line}: chain {chain}: sequence has {len(seq)} residues but labels "
                    f"has {len(labels)} characters"
                )
            if not seq:
                raise LabelFileError(f"{path}:{line}: chain {chain}: empty sequence")
            bad = set(labels) - {"0", "1"}
            if bad:
                raise LabelFileError(
                    f"{path}:{line}: chain {chain}: labels contain {''.join(sorted(bad))!r}, "
                    "expected only 0 and 1"
                )
            rows.append((line, row))
    return rows


@dataclass
class _Merged:
    pdb_chain: str
    labels: np.ndarray
    roles: set[Role]
    splits: set[str]


def read_concept(path: Path, *, max_length: int = MAX_RESIDUES) -> ConceptSet:
    """Read, check, split and deduplicate one label file (all chains, no subsampling)."""
    name = path.name.removesuffix(".gz").removesuffix(".tsv")
    description, source = KNOWN_CONCEPTS.get(name, (name, str(path)))
    rows = _read_rows(path)
    all_splits = {row["split"] for _, row in rows}
    merged: dict[str, _Merged] = {}
    counts = {"rows": len(rows), "merged_duplicates": 0, "too_long": 0}
    for line, row in rows:
        role = split_role(name, row["split"], all_splits)
        if role is None:
            raise LabelFileError(
                f"{path}:{line}: chain {row['pdb_chain']}: split {row['split']!r} has no "
                "train/test rule (see trainer/concepts/labels.py)"
            )
        seq = row["sequence"]
        if len(seq) > max_length:
            counts["too_long"] += 1
            continue
        labels = np.frombuffer(row["labels"].encode("ascii"), dtype=np.uint8) == ord("1")
        if seq in merged:
            counts["merged_duplicates"] += 1
            entry = merged[seq]
            entry.labels = entry.labels | labels
            entry.roles.add(role)
            entry.splits.add(row["split"])
        else:
            merged[seq] = _Merged(row["pdb_chain"], labels, {role}, {row["split"]})
    train: list[Chain] = []
    test: list[Chain] = []
    for seq, entry in merged.items():
        role_: Role = "test" if "test" in entry.roles else "train"
        chain = Chain(entry.pdb_chain, seq, entry.labels, role_, tuple(sorted(entry.splits)))
        (test if role_ == "test" else train).append(chain)
    return ConceptSet(name, description, source, path, train, test, counts)


def subsample(concept: ConceptSet, max_chains: int | None, seed: int) -> ConceptSet:
    """At most ``max_chains`` chains per split, drawn without replacement, in file order.

    The generator is seeded by (seed, CRC32 of the concept name), so a concept's sample does
    not change when other concepts are added or removed.
    """
    if max_chains is None:
        return concept
    rng = np.random.default_rng([seed, zlib.crc32(concept.name.encode())])

    def pick(chains: list[Chain]) -> list[Chain]:
        if len(chains) <= max_chains:
            return list(chains)
        keep = np.sort(rng.choice(len(chains), size=max_chains, replace=False))
        return [chains[i] for i in keep]

    return ConceptSet(
        concept.name,
        concept.description,
        concept.source,
        concept.path,
        pick(concept.train),
        pick(concept.test),
        dict(concept.counts),
    )


def load_concepts(
    paths: list[Path], *, max_chains: int | None, seed: int, max_length: int = MAX_RESIDUES
) -> list[ConceptSet]:
    """Every label file as a concept, checked, split, deduplicated and subsampled."""
    return [
        subsample(read_concept(p, max_length=max_length), max_chains, seed) for p in sorted(paths)
    ]


def segment_starts(labels: np.ndarray) -> np.ndarray:
    """Indices where a contiguous run of labelled residues begins (a 'site')."""
    lab = np.asarray(labels, dtype=bool)
    prev = np.concatenate(([False], lab[:-1]))
    return np.flatnonzero(lab & ~prev)
