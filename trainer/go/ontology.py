"""The Gene Ontology DAG (goatools), with alt_id/obsolete resolution and is_a + part_of ancestors.

goatools reads only plain files, so a gzipped ``go-basic.obo.gz`` is decompressed once into a
cache directory. Obsolete terms are loaded too (``load_obsolete=True``) so that their
``replaced_by`` can be followed; every other consumer sees only the live terms.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from goatools.godag.go_tasks import get_go2ancestors
from goatools.obo_parser import GODag, GOTerm

from app.atomic_write import atomic_file

NAMESPACES = {"biological_process": "BP", "molecular_function": "MF", "cellular_component": "CC"}
# Edges followed when propagating annotations to ancestors (is_a is always followed).
PROPAGATION_RELATIONSHIPS = frozenset({"part_of"})


def plain_obo(path: Path, cache_dir: Path) -> Path:
    """A plain-text copy of ``path`` (decompressed into ``cache_dir`` when it ends in .gz)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"GO ontology file not found: {path}")
    if path.suffix != ".gz":
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / path.stem
    if target.exists() and target.stat().st_mtime >= path.stat().st_mtime:
        return target
    with gzip.open(path, "rb") as src, atomic_file(target) as dst:
        shutil.copyfileobj(src, dst)
    return target


@dataclass
class ResolveCounts:
    """How many (protein, GO id) annotations were kept, remapped or dropped."""

    kept: int = 0
    alt_id_mapped: int = 0
    replaced_by_mapped: int = 0
    obsolete_dropped: int = 0
    unknown_dropped: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Ontology:
    """Live GO terms, id resolution maps and ancestor sets (is_a + part_of)."""

    dag: GODag
    terms: dict[str, GOTerm]  # live main ids only
    alt_to_main: dict[str, str]
    replaced_by: dict[str, str]  # obsolete id -> live main id
    obsolete: set[str]
    ancestors: dict[str, frozenset[str]] = field(repr=False)

    def namespace(self, go_id: str) -> str:
        """'BP', 'MF' or 'CC' of a live main id."""
        return NAMESPACES[self.terms[go_id].namespace]

    def resolve(self, go_id: str) -> tuple[str | None, str]:
        """(live main id or None, what happened: kept|alt_id|replaced_by|obsolete|unknown)."""
        if go_id in self.terms:
            return go_id, "kept"
        if go_id in self.alt_to_main:
            return self.alt_to_main[go_id], "alt_id"
        if go_id in self.replaced_by:
            return self.replaced_by[go_id], "replaced_by"
        if go_id in self.obsolete:
            return None, "obsolete"
        return None, "unknown"

    def resolve_sets(self, annotations: Iterable[set[str]]) -> tuple[list[set[str]], ResolveCounts]:
        """Map each protein's GO ids to live main ids; count what was mapped or dropped."""
        counts = ResolveCounts()
        attr = {
            "kept": "kept",
            "alt_id": "alt_id_mapped",
            "replaced_by": "replaced_by_mapped",
            "obsolete": "obsolete_dropped",
            "unknown": "unknown_dropped",
        }
        out: list[set[str]] = []
        for ids in annotations:
            resolved: set[str] = set()
            for go_id in ids:
                main, what = self.resolve(go_id)
                setattr(counts, attr[what], getattr(counts, attr[what]) + 1)
                if main is not None:
                    resolved.add(main)
            out.append(resolved)
        return out, counts

    def propagate(self, go_ids: Iterable[str]) -> set[str]:
        """The ids with all their ancestors over is_a and part_of."""
        closed: set[str] = set()
        for go_id in go_ids:
            closed.add(go_id)
            closed |= self.ancestors.get(go_id, frozenset())
        return closed

    @cached_property
    def is_a_ancestors(self) -> dict[str, frozenset[str]]:
        """Ancestors over is_a alone: goatools' default propagation (``relationships=None``),
        the seed paper's protocol. Computed on first use."""
        raw = get_go2ancestors(list(self.terms.values()), set())
        return {go_id: frozenset(a) for go_id, a in raw.items()}

    def parents(self, go_id: str) -> list[str]:
        """Direct is_a and part_of parents, sorted."""
        term = self.terms[go_id]
        found = {p.item_id for p in term.parents}
        for rel in PROPAGATION_RELATIONSHIPS:
            found |= {p.item_id for p in getattr(term, "relationship", {}).get(rel, set())}
        return sorted(found)


def load_ontology(obo_path: Path, cache_dir: Path) -> Ontology:
    """Load go-basic.obo(.gz) with goatools and build the resolution maps and ancestor sets."""
    plain = plain_obo(Path(obo_path), cache_dir)
    dag = GODag(
        str(plain),
        optional_attrs={"relationship", "def", "replaced_by"},
        load_obsolete=True,
        prt=None,
    )
    if not dag:
        raise ValueError(f"{obo_path}: no GO terms found (is this an OBO file?)")
    terms: dict[str, GOTerm] = {}
    alt_to_main: dict[str, str] = {}
    obsolete: set[str] = set()
    for key, term in dag.items():
        if term.is_obsolete:
            obsolete.add(key)
        elif key == term.item_id:
            terms[key] = term
        else:
            alt_to_main[key] = term.item_id
    replaced_by: dict[str, str] = {}
    for go_id in obsolete:
        target = getattr(dag[go_id], "replaced_by", None)
        if isinstance(target, (set, list)):  # goatools keeps a str; tolerate a collection
            target = next(iter(sorted(target)), None)
        if target:
            target = alt_to_main.get(target, target)
            if target in terms:
                replaced_by[go_id] = target
    raw = get_go2ancestors(list(terms.values()), set(PROPAGATION_RELATIONSHIPS))
    ancestors = {go_id: frozenset(a) for go_id, a in raw.items()}
    return Ontology(dag, terms, alt_to_main, replaced_by, obsolete, ancestors)
