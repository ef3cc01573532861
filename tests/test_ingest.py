"""Ingest on real slices: protein tables, FASTA + GAF, structures, resume, and the store upsert."""

from __future__ import annotations

import gzip
import json
from itertools import islice
from pathlib import Path

import pytest
from Bio.PDB import MMCIFIO
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.store.schema import Protein, Structure
from trainer.corpus import (
    attach_go,
    load_corpus,
    merge_corpora,
    read_fasta,
    read_gaf,
    read_protein_tsv,
    save_corpus,
)
from trainer.ingest import (
    IngestConfig,
    StructureFile,
    insert_structures,
    load_structure_mappings,
    run_ingest,
    upsert_proteins,
)
from trainer.structures import StructureMappingError, read_structure
from trainer.validate import IngestError

PROTEINS = Path("data/proteins")
HUMAN = PROTEINS / "human_sprot2014.tsv.gz"
STRUCTURE_PROTEINS = PROTEINS / "structure_proteins_sprot2014.tsv.gz"
# Real rows of structures.tsv: AF2 models mapped to Swiss-Prot, trypsin (insertion codes), a
# human Rac1 chain, 1KKL (one labelled chain, two unlabelled, no Swiss-Prot protein), 2A5T (three
# files whose chain A all "represent" 2a5t_A, one of them another protein) and a chain with
# neither protein nor labels.
TABLE_FILES = {
    "graphsite_af2/1a0a_A.pdb.gz",
    "graphsite_af2/1a73_A.pdb.gz",
    "db5.5/1PPE_r_b.pdb.gz",
    "db5.5/1D6R_r_u.pdb.gz",
    "db5.5/1JK9_r_u.pdb.gz",
    "db5.5/1E96_r_u.pdb.gz",
    "db5.5/1KKL_r_u.pdb.gz",
    "db5.5/2A5T_l_u.pdb.gz",
    "db5.5/2A5T_r_b.pdb.gz",
    "db5.5/2A5T_r_u.pdb.gz",
    "gpsite_example/A0A009IHW8.pdb.gz",
}


def _lines(shared: Path, rel: Path, n: int) -> list[str]:
    with gzip.open(shared / rel, "rt") as handle:
        return [line.rstrip("\n") for line in islice(handle, n + 1)]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def human_slice(tmp_path: Path, shared_dir: Path) -> Path:
    """The first 199 human proteins and Rac1 (P63000, in a structure), as a plain table."""
    with gzip.open(shared_dir / HUMAN, "rt") as handle:
        rac1 = next(line.rstrip("\n") for line in handle if line.startswith("P63000\t"))
    return _write(tmp_path / "human.tsv", [*_lines(shared_dir, HUMAN, 199), rac1])


@pytest.fixture
def table_slice(tmp_path: Path, shared_dir: Path) -> Path:
    """A few real rows of structures.tsv, with absolute file paths."""
    base = shared_dir / "data/structures"
    lines = (base / "structures.tsv").read_text().splitlines()
    keep = [lines[0]] + [
        f"{base / ln.split(chr(9))[0]}\t{ln.split(chr(9), 1)[1]}"
        for ln in lines[1:]
        if ln.split("\t")[0] in TABLE_FILES
    ]
    return _write(tmp_path / "structures.tsv", keep)


def test_protein_table_reads_real_rows(human_slice: Path) -> None:
    corpus = read_protein_tsv(human_slice)
    assert len(corpus) == 200
    assert corpus.accessions[0] == "A0A183" and corpus.genes[0] == "LCE6A"
    assert corpus.go_bp[0] == {"GO:0031424"} and not corpus.go_mf[0]
    assert set(corpus.taxon_ids) == {9606}
    assert all(len(s) > 0 for s in corpus.sequences)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: [*c[:9], c[9][:11] + "#" + c[9][12:]], "human.tsv:17: sequence has invalid character '#' at position 12"),
        (lambda c: c[:8], "human.tsv:17: expected 10 tab-separated columns, got 8"),
        (lambda c: [*c[:5], "7", *c[6:]], "human.tsv:17: length column says '7' but the sequence has"),
        (lambda c: [*c[:6], "GO:12", *c[7:]], "human.tsv:17: column go_bp: 'GO:12' is not a GO id"),
        (lambda c: ["", *c[1:]], "human.tsv:17: empty accession"),
    ],
)  # fmt: skip
def test_bad_table_rows_name_file_and_line(
    tmp_path: Path, shared_dir: Path, edit: object, message: str
) -> None:
    lines = _lines(shared_dir, HUMAN, 30)
    lines[16] = "\t".join(edit(lines[16].split("\t")))  # type: ignore[operator]
    with pytest.raises(IngestError) as err:
        read_protein_tsv(_write(tmp_path / "human.tsv", lines))
    assert message in str(err.value)


def test_merge_keeps_first_and_unions_go(human_slice: Path, tmp_path: Path) -> None:
    first = read_protein_tsv(human_slice)
    # The same real proteins in another file with only their MF ids and another source name.
    lines = human_slice.read_text().splitlines()
    second = [lines[0]] + [
        "\t".join([*c[:6], "", c[7], "", *c[9:]]) for c in (ln.split("\t") for ln in lines[1:50])
    ]
    other = read_protein_tsv(_write(tmp_path / "other.tsv", second))
    merged = merge_corpora([other, first])
    assert merged.accessions[:49] == first.accessions[:49] and len(merged) == 200
    assert merged.sources[0] == "other.tsv"
    assert merged.go_bp[:49] == first.go_bp[:49] and merged.go_mf[:49] == first.go_mf[:49]


def test_fasta_and_gaf_rebuild_the_table(tmp_path: Path, human_slice: Path) -> None:
    """FASTA (UniProt headers, lower case, wrapped) + GAF (with a NOT row) == the table rows."""
    table = read_protein_tsv(human_slice)
    fasta, gaf = [], ["!gaf-version: 2.2"]
    for i, acc in enumerate(table.accessions[:40]):
        seq = table.sequences[i].lower()
        gene = (table.genes[i] or "").split("|")[0]
        fasta.append(
            f">sp|{acc}|{gene}_HUMAN {table.names[i]} OS=Homo sapiens OX=9606 GN={gene} PE=1 SV=1"
        )
        fasta += [seq[k : k + 60] for k in range(0, len(seq), 60)]
        for aspect, ids in (("P", table.go_bp[i]), ("F", table.go_mf[i]), ("C", table.go_cc[i])):
            for go_id in sorted(ids):
                gaf.append("\t".join(["UniProtKB", acc, gene, "", go_id, "GO_REF:0000024", "IEA", "", aspect, "", "", "protein", "taxon:9606", "20140101", "UniProt", "", ""]))  # fmt: skip
    # A NOT row: a real id from another protein, which must not be attached.
    not_id = sorted(table.go_bp[45] - table.go_bp[0])[0]
    gaf.append("\t".join(["UniProtKB", table.accessions[0], "x", "NOT", not_id, "r", "IEA", "", "P", "", "", "protein", "taxon:9606", "20140101", "UniProt", "", ""]))  # fmt: skip
    fasta.append(">P99999 a plain header")
    fasta.append("MKT LLV\tAAG")
    corpus = read_fasta(_write(tmp_path / "x.fasta", fasta))
    attach_go(corpus, read_gaf(_write(tmp_path / "x.gaf", gaf)))
    assert corpus.accessions[:40] == table.accessions[:40]
    assert corpus.sequences[:40] == table.sequences[:40]
    assert corpus.taxon_ids[0] == 9606 and corpus.organisms[0] == "Homo sapiens"
    assert corpus.names[0] == table.names[0]
    assert corpus.go_bp[:40] == table.go_bp[:40] and corpus.go_cc[:40] == table.go_cc[:40]
    assert not_id not in corpus.go_bp[0]
    assert corpus.accessions[40] == "P99999" and corpus.sequences[40] == "MKTLLVAAG"
    assert corpus.names[40] == "a plain header"


def test_bad_fasta_and_gaf_name_file_and_line(tmp_path: Path, human_slice: Path) -> None:
    table = read_protein_tsv(human_slice)
    lines = [">sp|A|B_HUMAN x", table.sequences[0][:60], table.sequences[0][60:70] + "J1"]
    with pytest.raises(IngestError, match=r"bad\.fasta:3: sequence has invalid character 'J' at position 71"):  # fmt: skip
        read_fasta(_write(tmp_path / "bad.fasta", lines))
    with pytest.raises(IngestError, match=r"orphan\.fasta:1: sequence data before"):
        read_fasta(_write(tmp_path / "orphan.fasta", [table.sequences[0]]))
    row = ["UniProtKB", table.accessions[0], "g", "", "GO:0031424", "r", "IEA", "", "X", "", "", "protein", "taxon:9606", "20140101", "UniProt", "", ""]  # fmt: skip
    with pytest.raises(IngestError, match=r"bad\.gaf:2: column 9: aspect 'X'"):
        read_gaf(_write(tmp_path / "bad.gaf", ["!gaf-version: 2.2", "\t".join(row)]))
    with pytest.raises(IngestError, match=r"short\.gaf:1: GAF rows have 15-17"):
        read_gaf(_write(tmp_path / "short.gaf", ["\t".join(row[:9])]))


def test_save_and_load_round_trip(tmp_path: Path, human_slice: Path) -> None:
    corpus = read_protein_tsv(human_slice)
    save_corpus(tmp_path, corpus)
    assert load_corpus(tmp_path) == corpus


def _config(human_slice: Path, table_slice: Path, shared: Path, **kw: object) -> IngestConfig:
    return IngestConfig(
        protein_tsvs=[human_slice, shared / STRUCTURE_PROTEINS],
        structures_table=table_slice,
        **kw,  # type: ignore[arg-type]
    )


def test_run_ingest_maps_structures_and_resumes(
    tmp_path: Path, human_slice: Path, table_slice: Path, shared_dir: Path
) -> None:
    cfg = _config(human_slice, table_slice, shared_dir, max_proteins=250, seed=3)
    work = tmp_path / "run"
    corpus = run_ingest(work, cfg)
    index = corpus.index()
    # Every protein a structure maps to was kept; the rest is a sample of the 200 + 634.
    for acc in ("P07270", "Q94702", "P00760", "P40202", "P63000"):
        assert acc in index, acc
    own = [a for a in corpus.accessions if a.startswith("PDB:")]
    assert own == ["PDB:1kkl_C", "PDB:2a5t_A", "PDB:2A5T_l_u_A"]
    assert len(corpus) == 250 + len(own)
    maps = load_structure_mappings(work)
    by_key = {(Path(m.file_path).name, m.chain): m for m in maps}
    # The chain whose labels agree exactly defines PDB:2a5t_A; the unbound copy aligns to it; the
    # ligand file's chain A is another protein and gets one of its own.
    exact = by_key[("2A5T_r_b.pdb.gz", "A")]
    assert corpus.sequences[index["PDB:2a5t_A"]] == exact.chain_sequence
    assert by_key[("2A5T_r_u.pdb.gz", "A")].accession == "PDB:2a5t_A"
    assert by_key[("2A5T_l_u.pdb.gz", "A")].accession == "PDB:2A5T_l_u_A"
    assert by_key[("1KKL_r_u.pdb.gz", "C")].identity == 1.0
    m = by_key[("1a0a_A.pdb.gz", "A")]
    assert m.accession == "P07270" and m.sequence_positions[1] == 250
    assert Path(m.file_path).is_absolute() and m.format == "pdb"
    trypsin = by_key[("1PPE_r_b.pdb.gz", "E")]
    assert trypsin.protein_index == index["P00760"] and trypsin.sequence_positions[0] == 23
    assert ("A0A009IHW8.pdb.gz", "A") not in by_key  # no protein, no labels: skipped
    for mapping in maps:
        seq = corpus.sequences[mapping.protein_index]
        hits = [mapping.chain_sequence[i] == seq[p] for i, p in enumerate(mapping.sequence_positions) if p >= 0]  # fmt: skip
        assert sum(hits) / len(hits) >= 0.9
    manifest = json.loads((work / "corpus/manifest.json").read_text())
    assert manifest["structure_counts"]["skipped:no_corpus_protein"] == 3
    # Resume: DONE holds the config hash, so a rerun loads instead of rebuilding.
    stamp = (work / "corpus/proteins.tsv.gz").stat().st_mtime_ns
    assert run_ingest(work, cfg) == corpus
    assert (work / "corpus/proteins.tsv.gz").stat().st_mtime_ns == stamp
    # Same config elsewhere: same corpus order; another seed: another sample.
    assert run_ingest(tmp_path / "again", cfg).accessions == corpus.accessions
    other = run_ingest(tmp_path / "seed4", cfg.model_copy(update={"seed": 4}))
    assert other.accessions != corpus.accessions
    assert (tmp_path / "seed4/corpus/DONE").read_text() != (work / "corpus/DONE").read_text()


def test_length_filter_and_no_structure_priority(
    tmp_path: Path, human_slice: Path, table_slice: Path, shared_dir: Path
) -> None:
    cfg = _config(
        human_slice, table_slice, shared_dir,
        max_proteins=50, min_length=100, max_length=600, include_structure_proteins=False,
        include_structure_chains=False,
    )  # fmt: skip
    corpus = run_ingest(tmp_path / "run", cfg)
    assert len(corpus) == 50 and all(100 <= len(s) <= 600 for s in corpus.sequences)
    assert not any(a.startswith("PDB:") for a in corpus.accessions)


@pytest.mark.parametrize("store_url", ["sqlite", "postgres"], indirect=True)
def test_store_upsert_is_idempotent(
    migrated_engine: Engine,
    tmp_path: Path,
    human_slice: Path,
    table_slice: Path,
    shared_dir: Path,
) -> None:
    cfg = _config(human_slice, table_slice, shared_dir, max_proteins=120)
    corpus = run_ingest(tmp_path / "run", cfg)
    maps = load_structure_mappings(tmp_path / "run")
    with Session(migrated_engine) as session, session.begin():
        ids = upsert_proteins(session, corpus.subset(range(60)))
    with Session(migrated_engine) as session, session.begin():
        all_ids = upsert_proteins(session, corpus)
        assert insert_structures(session, maps, all_ids) == len(maps)
    assert all(all_ids[a] == i for a, i in ids.items())
    assert sorted(all_ids) == sorted(corpus.accessions)
    with Session(migrated_engine) as session, session.begin():
        assert upsert_proteins(session, corpus) == all_ids
        assert insert_structures(session, maps, all_ids) == 0
    with Session(migrated_engine) as session:
        assert session.scalar(select(func.count()).select_from(Protein)) == len(corpus)
        trypsin = session.scalars(select(Structure).where(Structure.chain == "E")).one()
        assert trypsin.protein_id == all_ids["P00760"]
        assert trypsin.sequence_positions[0] == 23 and trypsin.residue_ids[0] == "16"
        p = session.get(Protein, all_ids[corpus.accessions[0]])
        assert p is not None and p.sequence == corpus.sequences[0]
        assert p.go_bp == (";".join(sorted(corpus.go_bp[0])) or None)


def test_user_mmcif_structure_is_mapped(tmp_path: Path, shared_dir: Path) -> None:
    """A user's own mmCIF chain (a real entry re-written as mmCIF) enters with its accession."""
    cif = tmp_path / "mine.cif"
    io = MMCIFIO()
    io.set_structure(read_structure(shared_dir / "data/structures/db5.5/1JK9_r_u.pdb.gz"))
    io.save(str(cif))
    cfg = IngestConfig(
        protein_tsvs=[shared_dir / STRUCTURE_PROTEINS],
        structure_files=[StructureFile(path=cif, chain="A", accession="P40202")],
        max_proteins=20,
    )
    corpus = run_ingest(tmp_path / "run", cfg)
    assert "P40202" in corpus.index() and len(corpus) == 20
    (mapping,) = load_structure_mappings(tmp_path / "run")
    assert mapping.format == "mmcif" and mapping.source == "user"
    assert mapping.identity == 1.0 and mapping.file_path == str(cif.resolve())
    bad = cfg.model_copy(
        update={"structure_files": [StructureFile(path=cif, chain="A", accession="P07270")]}
    )
    with pytest.raises(StructureMappingError, match=r"identity|coverage"):
        run_ingest(tmp_path / "bad", bad.model_copy(update={"max_proteins": None}))
