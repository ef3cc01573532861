"""The worklist stage: missing-annotation candidates per GO hit, checked against a later snapshot.

Runs after the GO stage. Reads ``go/{name}/hits.npz``, ``analysis/{name}/protein_activations.npz``,
the corpus's own (2014) annotations and a later snapshot (``worklist.later_go``); writes
``worklist/{name}/candidates.npz`` (``worklist.CANDIDATE_COLUMNS``), ``worklist/{name}/summary.json``
and ``worklist/{name}/DONE`` (a stamp: the settings, the dictionary's GO stamp, the corpus and the
later file), then ``worklist/summary.json`` (every dictionary side by side).
"""

from __future__ import annotations

import hashlib
import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from app.atomic_write import write_atomic
from app.stage_summaries import GoSummary, WorklistSummary
from trainer.analysis_files import load_columns, save_columns
from trainer.go.later_snapshot import (
    EVIDENCE_GROUPS,
    GROUP_ORDER,
    read_entrez_genes,
    read_later_annotations,
    resolve_and_propagate,
)
from trainer.go.ontology import Ontology, load_ontology
from trainer.go.protein_table import GoCorpus
from trainer.go.stage import load_activations
from trainer.go.worklist import KS, Snapshots, build_worklists, precision_at
from trainer.layout import RunLayout, WorklistFiles
from trainer.stage_driver import StageUnit, run_unit
from trainer.stamps import read_stamp

console = Console()


class WorklistConfig(BaseModel):
    """Parameters of the worklist stage (recorded in every summary.json)."""

    later_go: Path = Path("../shared/data/annotations/human_go_2022.tsv.gz")
    # Protein tables whose ``entrez_gene`` column joins corpus accessions to the later file's
    # genes; proteins without a gene id (non-human) are never candidates.
    gene_tables: list[Path] = Field(
        default_factory=lambda: [Path("../shared/data/proteins/human_sprot2014.tsv.gz")]
    )
    max_candidates: int = Field(100, ge=1, description="candidates kept per (feature, term)")
    length_bins: int = Field(10, ge=1, description="quantile bins of the length-matched baseline")


def statement(cfg: WorklistConfig, alpha: float, threshold: float) -> str:
    """What a worklist and its check are, in one paragraph (shown beside the figures)."""
    return (
        f"Hits: strict-protocol terms with q < {alpha} and length-adjusted q < {alpha}, the "
        f"feature's most specific such terms. Candidates: human proteins with activation > "
        f"{threshold} lacking the term in Swiss-Prot 2014 (propagated over is_a + part_of), ranked "
        f"by activation, at most {cfg.max_candidates} per term. Confirmed: the 2022 snapshot "
        "has the term or a descendant (both propagated over the same go-basic 2021 ontology). "
        "Precision at k: per list over its first min(k, n) candidates, averaged over the "
        "feature's lists, then over features. Baseline: the gain rate of every human protein "
        f"lacking the term in 2014 within the candidate's length bin ({cfg.length_bins} "
        "quantile bins of human protein length), averaged like the lists (an exact expectation)."
    )


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:20]


def build_snapshots(
    ontology: Ontology, corpus: GoCorpus, cfg: WorklistConfig
) -> tuple[Snapshots, dict[str, Any]]:
    """Both snapshots of the corpus's human proteins over ``ontology``, and how ids resolved."""
    genes = read_entrez_genes(cfg.gene_tables)
    later = read_later_annotations(cfg.later_go)
    rows = [i for i, a in enumerate(corpus.accessions) if a in genes]
    earlier_raw = [corpus.go_bp[i] | corpus.go_mf[i] | corpus.go_cc[i] for i in rows]
    earlier_resolved, earlier_counts = ontology.resolve_sets(earlier_raw)
    earlier = [ontology.propagate(ids) for ids in earlier_resolved]
    later_groups = resolve_and_propagate(
        ontology, [later.for_genes(genes[corpus.accessions[i]]) for i in rows]
    )
    lengths = np.array([len(corpus.sequences[i]) for i in rows], dtype=np.int64)
    snapshots = Snapshots(np.asarray(rows, dtype=np.int64), lengths, earlier,
                          later_groups.groups, cfg.length_bins)  # fmt: skip
    with_later = sum(
        1 for i in rows if any(g in later.by_gene for g in genes[corpus.accessions[i]])
    )
    info = {
        "human_proteins": len(rows),
        "human_proteins_in_later": with_later,
        "earlier_resolution": earlier_counts.as_dict(),
        "later_resolution": later_groups.resolution,
        "later_rows": later.n_rows,
        "later_rows_nd_skipped": later.n_skipped_nd,
        "evidence_groups": {g: sorted(EVIDENCE_GROUPS[g]) for g in GROUP_ORDER},
    }
    return snapshots, info


def run_worklist_stage(
    workdir: Path,
    cfg: WorklistConfig,
    *,
    obo_path: Path,
    dictionaries: list[str],
    corpus: GoCorpus,
    controls: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Worklists of every dictionary whose stamp changed; returns each one's summary."""
    workdir = Path(workdir)
    layout = RunLayout(workdir)
    inputs = {"config": json.loads(cfg.model_dump_json()), "later": _file_digest(cfg.later_go),
              "genes": [_file_digest(p) for p in cfg.gene_tables], "obo": _file_digest(obo_path),
              "corpus": read_stamp(layout.corpus.done)}  # fmt: skip
    summaries: dict[str, dict[str, Any]] = {}
    built: list[tuple[Snapshots, dict[str, Any]]] = []  # the snapshots, once a worklist needs them

    def snapshots() -> tuple[Snapshots, dict[str, Any]]:
        if not built:
            built.append(build_snapshots(load_ontology(obo_path, layout.go_cache), corpus, cfg))
        return built[0]

    for name in dictionaries:
        files = layout.worklist(name)
        unit = StageUnit(f"worklist: {name}", files.done,
                         {**inputs, "go": read_stamp(layout.go_hits(name).done)},
                         outputs=(files.summary, files.candidates))  # fmt: skip

        def make(name: str = name) -> dict[str, Any]:
            return _run_one(layout, name, cfg, *snapshots(), len(corpus.accessions))

        summaries[name] = run_unit(unit, make, load=partial(_read_summary, files))
    for name, control in (controls or {}).items():
        if name in summaries and control in summaries:
            summaries[name]["random_init_control"] = control
    write_atomic(layout.worklists.summary, json.dumps(
        {"dictionaries": summaries, "controls": controls or {}}, indent=2))  # fmt: skip
    print_summaries(summaries)
    return summaries


def _read_summary(files: WorklistFiles) -> dict[str, Any]:
    return WorklistSummary.read(files.summary).dump()


def _run_one(
    layout: RunLayout, name: str, cfg: WorklistConfig, snapshots: Snapshots,
    info: dict[str, Any], n_proteins: int,
) -> dict[str, Any]:  # fmt: skip
    started = time.perf_counter()
    files = layout.worklist(name)
    files.dir.mkdir(parents=True, exist_ok=True)
    go_files = layout.go_hits(name)
    go_config = GoSummary.read(go_files.summary).config
    if go_config is None:
        raise ValueError(f"{go_files.summary}: no GO config recorded (run the GO stage again)")
    alpha, threshold = go_config.alpha, go_config.active_threshold
    hits = load_columns(go_files.hits)
    acts = sp.csc_matrix(load_activations(layout.analysis(name).protein_activations, n_proteins))
    candidates = build_worklists(acts, hits, snapshots, alpha=alpha, threshold=threshold,
                                 max_candidates=cfg.max_candidates)  # fmt: skip
    save_columns(files.candidates, candidates)
    summary = {
        "dictionary": name,
        "statement": statement(cfg, alpha, threshold),
        "config": json.loads(cfg.model_dump_json()),
        "alpha": alpha,
        "features_with_list": int(np.unique(candidates["feature_index"]).size),
        "lists": int(np.unique(np.char.add(candidates["feature_index"].astype("U12"),
                                           candidates["go_id"])).size),
        "candidates": len(candidates["rank"]),
        "precision": precision_at(candidates, KS),
        **info,
        "seconds": round(time.perf_counter() - started, 2),
    }  # fmt: skip
    write_atomic(files.summary, WorklistSummary.model_validate(summary).to_json())
    return summary


def print_summaries(summaries: dict[str, dict[str, Any]]) -> None:
    """Precision at 10/50/100 of each dictionary beside its length-matched baseline."""
    table = Table(title="Worklists: share of 2014 candidates that gained the term by 2022 "
                  "(mean over features; baseline = random human proteins, length-matched)")  # fmt: skip
    for col in ("dictionary", "features", "lists", *(f"P@{k} (base)" for k in KS),
                "P@10 exp. / cur. / IEA+IBA"):  # fmt: skip
        table.add_column(col, justify="left" if col == "dictionary" else "right")
    for name, s in summaries.items():
        p = s["precision"]
        cells = [
            "—"
            if p.get(str(k)) is None
            else f"{p[str(k)]['any']:.3f} ({p[str(k)]['baseline']:.3f})"
            for k in KS
        ]
        p10 = p.get("10")
        split = "—" if p10 is None else " / ".join(f"{p10[g]:.3f}" for g in GROUP_ORDER)
        table.add_row(name, str(s["features_with_list"]), str(s["lists"]), *cells, split)
    console.print(table)
