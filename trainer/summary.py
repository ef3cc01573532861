"""``protsae trainer summary``: a run's headline figures, read from its work directory.

The Findings page and ``trainer report`` read a published run from the store; this reads the
stage outputs themselves, so it works before publishing and on a machine without the store (a
lent GPU whose results come back as one small JSON file). Figures: seconds per stage, each
dictionary's fidelity (FVE, L0, dead fraction, loss recovered), GO hit rates and concept
alignment (InterPLM's F1 > 0.5 criterion).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from app.atomic_write import write_atomic
from app.stage_summaries import (
    AnalysisSummaryDoc,
    ConceptsManifest,
    ConceptsSummary,
    CorpusManifest,
    EmbedManifest,
    GoSummary,
    TrainingMetrics,
)
from trainer.layout import RunLayout


def record_timing(workdir: Path, stage: str, seconds: float) -> None:
    """Add one finished stage's wall time to ``{workdir}/timings.json`` (the last run wins)."""
    layout = RunLayout(workdir)
    timings = read_timings(layout)
    timings[stage] = round(seconds, 2)
    path = layout.timings
    write_atomic(path, json.dumps(timings, indent=1))


def read_timings(layout: RunLayout) -> dict[str, float]:
    """Seconds per stage of the run's latest invocations (``timings.json``; none yet: empty)."""
    path = layout.timings
    timings: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}
    return timings


def collect_summary(workdir: Path) -> dict[str, Any]:
    """Everything the stages of the run in ``workdir`` have finished, as plain JSON data."""
    if not workdir.exists():
        raise FileNotFoundError(f"{workdir}: no such run directory (has the run started?)")
    layout = RunLayout(workdir)
    corpus = CorpusManifest.read_if_exists(layout.corpus.manifest)
    embed = EmbedManifest.read_if_exists(layout.embeddings().manifest)
    dictionaries: dict[str, dict[str, Any]] = {}
    for name in layout.trained():
        trained = TrainingMetrics.read_if_exists(layout.sae(name).metrics)
        metrics = trained.dump() if trained is not None else {}
        row: dict[str, Any] = {
            key: metrics.get(key)
            for key in ("fve", "mse", "l0", "dead_fraction", "loss_recovered", "ce_clean",
                        "ce_spliced", "ce_zero", "n_train", "vectors_per_s", "is_control")
        }  # fmt: skip
        analysis = AnalysisSummaryDoc.read_if_exists(layout.analysis(name).summary)
        if analysis is not None and layout.analysis(name).done.exists():
            row["analyze_s"] = analysis.seconds
        go = GoSummary.read_if_exists(layout.go_hits(name).summary)
        if go is not None:
            row |= _go_row(go)
        concepts = ConceptsSummary.read_if_exists(layout.concept_results(name).summary)
        if concepts is not None:
            row["concepts_associated"] = concepts.n_concepts_associated
            row["concepts_evaluated"] = concepts.n_concepts_evaluated
            row["concept_best_f1_median"] = concepts.best_f1_distribution["median"]
            row["concept_best_f1_max"] = concepts.best_f1_distribution["max"]
        dictionaries[name] = row
    manifest = ConceptsManifest.read_if_exists(layout.concepts_manifest)
    return {
        "run_dir": str(workdir),
        "timings_s": read_timings(layout),
        "corpus": {
            "n_proteins": corpus.n_proteins if corpus else None,
            "n_structures_mapped": corpus.n_structures_mapped if corpus else None,
        },
        "embeddings": _embeddings(embed),
        "concept_chains": {
            "n_distinct_chains": manifest.n_distinct_chains if manifest else None,
            "n_distinct_residues": manifest.n_distinct_residues if manifest else None,
        },
        "dictionaries": dictionaries,
    }


def _go_row(go: GoSummary) -> dict[str, Any]:
    """A dictionary's GO figures: hit rates of our protocol's corrections and the paper's."""
    strict = go.protocols.get("strict")
    strict_bp = (strict.features_with_bp_hit if strict else None) or {}
    paper = go.protocols.get("paper")
    return {
        "go_s": go.seconds,
        "go_pct_features_bh": go.bh.pct_features_with_hit,
        "go_pct_active_features_bh": go.bh.pct_active_features_with_hit,
        "go_pct_features_bonferroni": go.bonferroni.pct_features_with_hit,
        "go_bp_features_strict_bh": strict_bp.get("bh"),
        "go_bp_features_strict_bonferroni": strict_bp.get("bonferroni"),
        "go_bp_features_paper": paper.features_with_hit if paper else None,
        "go_statements": {name: p.statement for name, p in go.protocols.items()},
    }


def _embeddings(manifest: EmbedManifest | None) -> dict[str, Any]:
    if manifest is None:
        keys = ("layers", "n_proteins", "n_residues", "model", "forward_s", "write_s", "wait_s")
        return dict.fromkeys(keys[:4]) | dict.fromkeys(keys[4:], 0.0)
    return {
        "layers": manifest.layers,
        "n_proteins": manifest.n_proteins,
        "n_residues": manifest.n_residues,
        "model": manifest.model,
    } | manifest.shard_seconds()


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def print_summary(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=max(Console().width, 140))
    console.print(f"run directory: {summary['run_dir']}")
    times = Table(title="seconds per stage")
    times.add_column("stage")
    times.add_column("seconds", justify="right")
    for stage, seconds in summary["timings_s"].items():
        times.add_row(stage, f"{seconds:.1f}")
    console.print(times)
    embed = summary["embeddings"]
    if embed.get("forward_s"):
        console.print(f"embed: forward passes {embed['forward_s']:.1f} s, pooling and writing "
                      f"{embed['write_s']:.1f} s (background), waiting for the writer "
                      f"{embed['wait_s']:.1f} s")  # fmt: skip
    table = Table(title="dictionaries")
    for column in ("dictionary", "FVE", "L0", "dead", "loss rec.", "GO % (BH)", "of active",
                   "BP hit: strict BH / Bonf.", "BP hit: paper", "concepts F1>0.5",
                   "best F1 (median / max)", "analyze s", "GO s"):  # fmt: skip
        if column == "dictionary":
            table.add_column(column, no_wrap=True, min_width=26)
        else:
            table.add_column(column, justify="right")
    for name, row in summary["dictionaries"].items():
        table.add_row(
            name,
            _fmt(row["fve"], ".3f"),
            _fmt(row["l0"], ".1f"),
            _fmt(row["dead_fraction"], ".1%"),
            _fmt(row["loss_recovered"], ".3f"),
            _fmt(row.get("go_pct_features_bh"), ".1f"),
            _fmt(row.get("go_pct_active_features_bh"), ".1f"),
            f"{_fmt(row.get('go_bp_features_strict_bh'), 'd')} / "
            f"{_fmt(row.get('go_bp_features_strict_bonferroni'), 'd')}",
            _fmt(row.get("go_bp_features_paper"), "d"),
            "—" if "concepts_associated" not in row
            else f"{row['concepts_associated']} / {row['concepts_evaluated']}",
            "—" if row.get("concept_best_f1_median") is None
            else f"{row['concept_best_f1_median']:.2f} / {row['concept_best_f1_max']:.2f}",
            _fmt(row.get("analyze_s"), ".1f"),
            _fmt(row.get("go_s"), ".1f"),
        )  # fmt: skip
    console.print(table)
    statements = {
        name: text
        for row in summary["dictionaries"].values()
        for name, text in row.get("go_statements", {}).items()
    }
    for name, text in sorted(statements.items()):  # "BP hit": features with >= 1 BP term
        console.print(f"GO protocol {name}: {text}")
