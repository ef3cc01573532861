"""The GO stage: enrichment of every feature of every dictionary, with controls, to files.

Reads the corpus and ``analysis/{name}/protein_activations.npz``; writes ``go/terms.tsv``,
``go/{name}/hits.npz``, ``go/{name}/summary.json``, ``go/{name}/DONE`` and finally ``go/DONE``.
A dictionary whose DONE marker carries the same config is not recomputed (resumable).

hits.npz stores only tests with q_value < alpha (BH over all tests of the dictionary),
p_bonferroni < alpha (paper protocol) or q_length < alpha (BH over the length-stratified test);
columns are ``enrichment.HIT_COLUMNS``.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, Field
from rich.console import Console
from rich.table import Table

from trainer.go.annotations import (
    NamespaceIncidence,
    build_incidence,
    resolve_corpus_annotations,
)
from trainer.go.controls import permuted_incidences
from trainer.go.enrichment import EnrichmentResult, enrich
from trainer.go.ontology import Ontology, load_ontology
from trainer.go.protein_table import GoCorpus
from trainer.go.summary import hit_rates, summarize

Namespace = Literal["BP", "MF", "CC"]
Method = Literal["fdr_bh", "bonferroni", "length_bh"]


class GoConfig(BaseModel):
    """Parameters of the GO stage (all recorded in every summary.json)."""

    obo_path: Path = Path("../shared/data/go/go-basic.obo.gz")
    cache_dir: Path | None = None  # where go-basic.obo is decompressed; default {workdir}/go/cache
    # A feature is active on a protein when its protein-level activation is > threshold.
    # 0.0 = "active at all", as the paper did (non-zero after TopK/ReLU).
    active_threshold: float = 0.0
    namespaces: list[Namespace] = ["BP", "MF", "CC"]
    min_term_size: int = Field(1, ge=1)  # population hits; 1 = every annotated term (paper)
    max_term_size: int | None = None
    alpha: float = Field(0.05, gt=0, lt=1)
    # Which corrections decide what hits.npz keeps (a test significant by any of them).
    methods: list[Method] = ["fdr_bh", "bonferroni", "length_bh"]
    n_permutations: int = Field(1, ge=0)
    # Length strata: of the permutation control's shuffles and of the length-adjusted test.
    length_bins: int = Field(10, ge=1)
    # The length-stratified test (p_length / q_length, trainer.go.stratified). Off only to save
    # time (it costs about 10x the Fisher tests on a dictionary); its "length_bh" method then
    # selects nothing.
    length_adjusted: bool = True
    seed: int = 0
    block_size: int = Field(256, ge=1)
    # Dictionaries enriched at once, one process each (forked: the ontology and incidences are
    # shared, not copied). 0 = min(CPU cores, 4, dictionaries). Changes speed, not results.
    workers: int = Field(0, ge=0)

    def digest(self) -> str:
        payload = self.model_dump_json(exclude={"workers"})
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _load_corpus(workdir: Path) -> GoCorpus:
    module = importlib.import_module("trainer.corpus")
    corpus: GoCorpus = module.load_corpus(workdir)
    return corpus


def load_activations(path: Path, n_proteins: int) -> sp.csr_matrix:
    """The protein × latent matrix, checked against the corpus size."""
    if not path.exists():
        raise FileNotFoundError(f"protein activations not found: {path}")
    matrix = sp.csr_matrix(sp.load_npz(path))
    if matrix.shape[0] != n_proteins:
        raise ValueError(f"{path}: {matrix.shape[0]} rows but the corpus has {n_proteins} proteins")
    return matrix


def build_incidences(
    ontology: Ontology, corpus: GoCorpus, cfg: GoConfig
) -> tuple[dict[str, NamespaceIncidence], dict[str, int]]:
    """Resolved, propagated, size-filtered incidence per namespace, and the resolution counts."""
    per_ns, counts = resolve_corpus_annotations(ontology, corpus.go_bp, corpus.go_mf, corpus.go_cc)
    out: dict[str, NamespaceIncidence] = {}
    for ns in cfg.namespaces:
        inc = build_incidence(ontology, ns, per_ns[ns], len(corpus.accessions))
        sizes = inc.term_sizes()
        keep = sizes >= cfg.min_term_size
        if cfg.max_term_size is not None:
            keep &= sizes <= cfg.max_term_size
        out[ns] = inc.restrict_terms(keep)
    return out, counts.as_dict()


def write_terms(path: Path, ontology: Ontology, term_ids: set[str]) -> None:
    """go/terms.tsv: every term tested in any namespace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle, delimiter="\t", lineterminator="\n")
        out.writerow(["id", "name", "namespace", "depth", "level", "definition", "parents"])
        for go_id in sorted(term_ids):
            term = ontology.terms[go_id]
            definition = " ".join(str(getattr(term, "defn", "") or "").split())
            out.writerow(
                [go_id, term.name, ontology.namespace(go_id), term.depth, term.level,
                 definition, ";".join(ontology.parents(go_id))]
            )  # fmt: skip


def save_hits(path: Path, result: EnrichmentResult) -> None:
    """hits.npz with plain (non-object) arrays so it loads without pickle."""
    cols = dict(result.columns)
    cols["go_id"] = cols["go_id"].astype("U10")
    cols["namespace"] = cols["namespace"].astype("U2")
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, allow_pickle=False, **cols)
    tmp.replace(path)


def _run_one(
    workdir: Path,
    name: str,
    corpus: GoCorpus,
    incidences: dict[str, NamespaceIncidence],
    ontology: Ontology,
    cfg: GoConfig,
) -> tuple[EnrichmentResult, dict[str, Any]]:
    acts = load_activations(
        workdir / "analysis" / name / "protein_activations.npz", len(corpus.accessions)
    )
    lengths = np.array([len(s) for s in corpus.sequences])

    def run(incs: dict[str, NamespaceIncidence]) -> EnrichmentResult:
        return enrich(
            acts, incs, ontology, threshold=cfg.active_threshold, alpha=cfg.alpha,
            block_size=cfg.block_size, methods=tuple(cfg.methods), lengths=lengths,
            n_length_bins=cfg.length_bins, length_adjusted=cfg.length_adjusted,
        )  # fmt: skip

    result = run(incidences)
    summary = summarize(result, ontology, cfg.alpha)
    perms = []
    for i in range(cfg.n_permutations):
        shuffled = permuted_incidences(incidences, lengths, cfg.length_bins, cfg.seed + i)
        perms.append(hit_rates(run(shuffled), cfg.alpha))
    summary["permutation_control"] = {
        "n_permutations": cfg.n_permutations,
        "length_bins": cfg.length_bins,
        "seed": cfg.seed,
        "mean_pct_features_with_hit_bh": _mean(p["bh"]["pct_features_with_hit"] for p in perms),
        "mean_pct_features_with_hit_bonferroni": _mean(
            p["bonferroni"]["pct_features_with_hit"] for p in perms
        ),
        "mean_pct_features_with_hit_length_bh": _mean(
            p["length_bh"]["pct_features_with_hit"] for p in perms if "length_bh" in p
        ),
        "permutations": perms,
    }
    return result, summary


@dataclass
class _Job:
    """Everything one dictionary's enrichment reads; its outputs go to ``go/{name}/``."""

    workdir: Path
    corpus: GoCorpus
    incidences: dict[str, NamespaceIncidence]
    ontology: Ontology
    cfg: GoConfig
    resolve_counts: dict[str, Any]

    def enrich_and_save(self, name: str) -> dict[str, Any]:
        out = self.workdir / "go" / name
        done = out / "DONE"
        out.mkdir(parents=True, exist_ok=True)
        done.unlink(missing_ok=True)
        started = time.perf_counter()
        result, summary = _run_one(
            self.workdir, name, self.corpus, self.incidences, self.ontology, self.cfg
        )
        summary.update(
            dictionary=name,
            config=json.loads(self.cfg.model_dump_json()),
            active_threshold=self.cfg.active_threshold,
            population_size={ns: inc.pop_size for ns, inc in self.incidences.items()},
            terms_tested={ns: len(inc.term_ids) for ns, inc in self.incidences.items()},
            annotation_resolution=self.resolve_counts,
            seconds=round(time.perf_counter() - started, 2),
        )
        save_hits(out / "hits.npz", result)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        done.write_text(self.cfg.digest() + "\n")
        return summary


_JOB: _Job | None = None


def _enrich_in_worker(name: str) -> dict[str, Any]:
    assert _JOB is not None, "GO worker started without a job (needs the fork start method)"
    try:
        return _JOB.enrich_and_save(name)
    except Exception as error:  # name the dictionary: the traceback stays in the worker
        raise RuntimeError(f"GO enrichment of {name!r} failed: {error}") from error


def _mean(values: Any) -> float | None:
    vals = list(values)
    return round(float(np.mean(vals)), 3) if vals else None


def run_go_stage(
    workdir: Path,
    cfg: GoConfig,
    *,
    dictionaries: list[str],
    control_of: dict[str, str] | None = None,
    corpus: GoCorpus | None = None,
) -> dict[str, dict[str, Any]]:
    """Enrich every dictionary (controls included), write go/…, return summaries by name.

    ``control_of`` maps a dictionary to its control dictionary (e.g. the same SAE recipe on a
    randomly initialised model); controls are run like any other dictionary.
    """
    workdir = Path(workdir)
    control_of = dict(control_of or {})
    names = list(dict.fromkeys([*dictionaries, *control_of.values()]))
    corpus = corpus if corpus is not None else _load_corpus(workdir)
    ontology = load_ontology(cfg.obo_path, cfg.cache_dir or workdir / "go" / "cache")
    incidences, resolve_counts = build_incidences(ontology, corpus, cfg)
    go_dir = workdir / "go"
    write_terms(
        go_dir / "terms.tsv", ontology, {t for i in incidences.values() for t in i.term_ids}
    )
    digest = cfg.digest()
    summaries: dict[str, dict[str, Any]] = {}
    todo = []
    for name in names:
        done = go_dir / name / "DONE"
        if done.exists() and done.read_text().strip() == digest:
            summaries[name] = json.loads((go_dir / name / "summary.json").read_text())
        else:
            todo.append(name)
    job = _Job(workdir, corpus, incidences, ontology, cfg, resolve_counts)
    workers = cfg.workers or min(os.cpu_count() or 1, 4)
    workers = min(workers, len(todo))
    if workers > 1 and "fork" in mp.get_all_start_methods():
        global _JOB  # read by the forked workers: shared copy-on-write, never pickled
        _JOB = job
        try:
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
                for name, summary in zip(todo, pool.map(_enrich_in_worker, todo), strict=True):
                    summaries[name] = summary
        except BrokenProcessPool as error:
            raise RuntimeError(
                f"a GO worker process died (out of memory?) with {workers} workers; set "
                "go.workers lower and rerun: finished dictionaries are kept"
            ) from error
        finally:
            _JOB = None
    else:
        for name in todo:
            summaries[name] = job.enrich_and_save(name)
    for name, control in control_of.items():
        summaries[name]["random_model_control"] = {
            "dictionary": control,
            "pct_features_with_hit_bh": summaries[control]["bh"]["pct_features_with_hit"],
            "pct_features_with_hit_bonferroni": summaries[control]["bonferroni"][
                "pct_features_with_hit"
            ],
            "pct_features_with_hit_length_bh": summaries[control]
            .get("length_bh", {})
            .get("pct_features_with_hit"),
        }
        (go_dir / name / "summary.json").write_text(json.dumps(summaries[name], indent=2))
    (go_dir / "DONE").write_text(json.dumps({"config": digest, "dictionaries": names}) + "\n")
    print_summaries(summaries, cfg.alpha)
    return summaries


def print_summaries(summaries: dict[str, dict[str, Any]], alpha: float) -> None:
    """A rich table: hit rates of each dictionary next to its controls."""
    table = Table(title=f"GO enrichment: % features with >= 1 term (corrected p < {alpha})")
    for col in ("dictionary", "features", "BH", "paper (Bonf.)", "length-adj. BH", "perm. BH",
                "perm. length-adj.", "random-model BH"):  # fmt: skip
        table.add_column(col, justify="left" if col == "dictionary" else "right")
    for name, s in summaries.items():
        perm = s.get("permutation_control", {})
        rnd = s.get("random_model_control", {})
        table.add_row(
            name, str(s["n_features"]),
            f"{s['bh']['pct_features_with_hit']:.1f}",
            f"{s['bonferroni']['pct_features_with_hit']:.1f}",
            _fmt(s.get("length_bh", {}).get("pct_features_with_hit")),
            _fmt(perm.get("mean_pct_features_with_hit_bh")),
            _fmt(perm.get("mean_pct_features_with_hit_length_bh")),
            _fmt(rnd.get("pct_features_with_hit_bh")),
        )  # fmt: skip
    Console().print(table)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"
