"""The GO stage: enrichment of every feature of every dictionary, with controls, to files.

Reads the corpus and ``analysis/{name}/protein_activations.npz``; writes ``go/terms.tsv``,
``go/{name}/hits.npz``, ``go/{name}/summary.json``, ``go/{name}/DONE`` and finally ``go/DONE``.
A dictionary whose DONE marker carries the same config is not recomputed (resumable).

Two protocols per dictionary (``summary.json`` ``protocols`` states each one's settings):
- ``strict`` (ours, ``hits.npz``, columns ``enrichment.HIT_COLUMNS``): one-sided Fisher over
  is_a + part_of, the namespaces and term sizes of the config, population = every protein with
  an annotation in the namespace; keeps the tests with q_value < alpha (BH over all tests of the
  dictionary), p_bonferroni < alpha (within the feature and namespace) or q_length < alpha (BH
  over the length-stratified test);
- ``paper`` (``paper_hits.npz``, columns ``paper.PAPER_COLUMNS``): the seed paper's goatools
  defaults exactly (``trainer.go.paper``); keeps its Bonferroni-significant tests.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import os
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, Field, model_validator
from rich.console import Console
from rich.table import Table

from app.atomic_write import atomic_file, write_atomic
from app.stage_summaries import GoSummary
from trainer.analysis_files import save_columns
from trainer.engines import Engine
from trainer.engines.local import LocalEngine
from trainer.go.annotations import (
    NamespaceIncidence,
    build_incidence,
    resolve_corpus_annotations,
)
from trainer.go.controls import permuted_incidences
from trainer.go.enrichment import (
    EnrichmentResult,
    PartialEnrichment,
    enrich_features,
    finish_enrichment,
)
from trainer.go.ontology import Ontology, load_ontology
from trainer.go.paper import (
    PaperPopulation,
    features_tested,
    finish_paper,
    paper_population,
    paper_summary,
    paper_tests,
)
from trainer.go.protein_table import GoCorpus
from trainer.go.summary import hit_rates, summarize
from trainer.layout import RunLayout
from trainer.stage_driver import StageUnit, needs_run
from trainer.stamps import read_stamp

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
    # time: it costs about as much again as the Fisher tests (2.0x Fisher on the demo's residue
    # TopK SAE, docs/pipeline.md); its "length_bh" method then selects nothing.
    length_adjusted: bool = True
    seed: int = 0
    block_size: int = Field(256, ge=1)
    # Processes that test features at once (forked: the ontology and incidences are shared,
    # not copied). 0 = min(CPU cores, 4). Changes speed, not results.
    workers: int = Field(0, ge=0)
    # Features per unit of parallel work: a dictionary's features (and each permutation's) are
    # split into ranges of this many, so one large dictionary spreads over every worker. A
    # multiple of block_size: the blocks, and so every p-value, are those of a serial run.
    chunk_features: int = Field(256, ge=1)
    # Also run the seed paper's protocol (trainer.go.paper: goatools' defaults, BP, human
    # population), stored beside ours as protocol "paper". Its settings are fixed, not options.
    paper_protocol: bool = True

    @model_validator(mode="after")
    def _chunks_hold_whole_blocks(self) -> GoConfig:
        if self.chunk_features % self.block_size:
            raise ValueError(
                f"go.chunk_features ({self.chunk_features}) must be a multiple of "
                f"go.block_size ({self.block_size})"
            )
        return self

    def digest(self) -> str:
        payload = self.model_dump_json(exclude={"workers", "chunk_features"})
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
    """go/terms.tsv: every term tested in any namespace, by either protocol."""
    with atomic_file(path, "w", newline="") as handle:
        out = csv.writer(handle, delimiter="\t", lineterminator="\n")
        out.writerow(["id", "name", "namespace", "depth", "level", "definition", "parents"])
        for go_id in sorted(term_ids):
            term = ontology.terms[go_id]
            definition = " ".join(str(getattr(term, "defn", "") or "").split())
            out.writerow(
                [go_id, term.name, ontology.namespace(go_id), term.depth, term.level,
                 definition, ";".join(ontology.parents(go_id))]
            )  # fmt: skip


def save_hits(path: Path, result: EnrichmentResult | dict[str, np.ndarray]) -> None:
    """hits.npz (or paper_hits.npz) with plain (non-object) arrays: loads without pickle."""
    cols = dict(result.columns if isinstance(result, EnrichmentResult) else result)
    cols["go_id"] = cols["go_id"].astype("U10")
    cols["namespace"] = cols["namespace"].astype("U2")
    save_columns(path, cols)


def n_features_of(path: Path) -> int:
    """Columns of a saved protein × latent matrix, read from its header arrays only."""
    if not path.exists():
        raise FileNotFoundError(f"protein activations not found: {path}")
    with np.load(path) as saved:
        return int(saved["shape"][1])


@dataclass(frozen=True)
class _Unit:
    """One range of one dictionary's features, tested against the real annotations
    (``variant`` -1) or against permutation ``variant``'s shuffled ones."""

    name: str
    variant: int
    features: slice


@dataclass
class _Job:
    """Everything the enrichment reads; a dictionary's outputs go to ``go/{name}/``."""

    layout: RunLayout
    corpus: GoCorpus
    incidences: dict[str, NamespaceIncidence]
    permuted: list[dict[str, NamespaceIncidence]]  # the permutation control's, shared
    lengths: np.ndarray
    ontology: Ontology
    cfg: GoConfig
    resolve_counts: dict[str, Any]
    stamps: dict[str, StageUnit]  # per dictionary: what its DONE stamps (trainer.stage_driver)
    paper: PaperPopulation | None  # the seed paper's population; None: protocol not run
    # Per process (each worker holds its own copy of the job): the dictionary it read last.
    activations: _ActivationCache = field(default_factory=lambda: _ActivationCache())

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (for another engine's workers) without the ontology: units never read it,
        only :meth:`finish` does, in the driver (and its term graph is too deep to pickle);
        and with an empty activation cache (the worker fills its own)."""
        return {**self.__dict__, "ontology": None, "activations": _ActivationCache()}

    def activations_path(self, name: str) -> Path:
        return self.layout.analysis(name).protein_activations

    def units(self, name: str) -> list[_Unit]:
        n = n_features_of(self.activations_path(name))
        step = self.cfg.chunk_features
        return [
            _Unit(name, variant, slice(start, min(n, start + step)))
            for variant in range(-1, self.cfg.n_permutations)
            for start in range(0, max(n, 1), step)
        ]

    def run_unit(self, unit: _Unit) -> tuple[PartialEnrichment, _PaperPart | None, float]:
        started = time.perf_counter()
        incs = self.incidences if unit.variant < 0 else self.permuted[unit.variant]
        acts = self.activations.get(self.activations_path(unit.name), len(self.corpus.accessions))
        part = enrich_features(
            acts, incs, features=unit.features, threshold=self.cfg.active_threshold,
            alpha=self.cfg.alpha, block_size=self.cfg.block_size, lengths=self.lengths,
            n_length_bins=self.cfg.length_bins, length_adjusted=self.cfg.length_adjusted,
        )  # fmt: skip
        paper = None
        if unit.variant < 0 and self.paper is not None:
            tests = paper_tests(acts, self.paper, features=unit.features,
                                block_size=self.cfg.block_size)  # fmt: skip
            paper = _PaperPart(tests, features_tested(acts[:, unit.features], self.paper))
        return part, paper, time.perf_counter() - started

    def finish(
        self, incs: dict[str, NamespaceIncidence], parts: list[PartialEnrichment], n_features: int
    ) -> EnrichmentResult:
        return finish_enrichment(
            parts, incs, self.ontology, n_features=n_features, alpha=self.cfg.alpha,
            methods=tuple(self.cfg.methods), length_adjusted=self.cfg.length_adjusted,
        )  # fmt: skip

    def finish_and_save(
        self,
        name: str,
        parts: dict[int, list[PartialEnrichment]],
        paper_parts: list[_PaperPart],
        n_features: int,
        seconds: float,
    ) -> dict[str, Any]:
        """Merge a dictionary's partial results, summarise them with the permutation control and
        write go/{name}/ (DONE last). ``seconds``: compute time summed over its units."""
        started = time.perf_counter()
        files = self.layout.go_hits(name)
        files.dir.mkdir(parents=True, exist_ok=True)
        files.done.unlink(missing_ok=True)
        result = self.finish(self.incidences, parts[-1], n_features)
        summary = summarize(result, self.ontology, self.cfg.alpha)
        cfg = self.cfg
        perms = [
            hit_rates(self.finish(self.permuted[i], parts[i], n_features), cfg.alpha)
            for i in range(cfg.n_permutations)
        ]
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
        summary.update(
            dictionary=name,
            config=json.loads(cfg.model_dump_json()),
            active_threshold=cfg.active_threshold,
            population_size={ns: inc.pop_size for ns, inc in self.incidences.items()},
            terms_tested={ns: len(inc.term_ids) for ns, inc in self.incidences.items()},
            annotation_resolution=self.resolve_counts,
            seconds=round(seconds + time.perf_counter() - started, 2),
        )
        summary["protocols"] = {"strict": strict_protocol(cfg, result, summary)}
        files.paper_hits.unlink(missing_ok=True)
        if self.paper is not None:
            paper = finish_paper([p.tests for p in paper_parts], self.paper, self.ontology)
            summary["protocols"]["paper"] = paper_summary(
                paper, self.paper, n_features, sum(p.n_tested for p in paper_parts)
            )
            save_hits(files.paper_hits, paper)
        save_hits(files.hits, result)
        write_atomic(files.summary, GoSummary.model_validate(summary).to_json())
        self.stamps[name].mark_done()
        return summary


@dataclass
class _PaperPart:
    """The paper protocol's significant tests of one feature range, and how many of its
    features it tested (non-zero on a human protein)."""

    tests: dict[str, np.ndarray]
    n_tested: int


def strict_protocol(
    cfg: GoConfig, result: EnrichmentResult, summary: dict[str, Any]
) -> dict[str, Any]:
    """Our protocol's statement, settings and BP figures (summary.json ``protocols.strict``)."""
    sizes = f">= {cfg.min_term_size}" + (
        f" and <= {cfg.max_term_size}" if cfg.max_term_size is not None else ""
    )
    c = result.columns
    bp = c["namespace"] == "BP"
    with_hit = {
        label: int(np.unique(c["feature_index"][bp & (c[col] < cfg.alpha)]).size)
        for label, col in (("bh", "q_value"), ("bonferroni", "p_bonferroni"), ("length_bh", "q_length"))
        if col in c
    }  # fmt: skip
    return {
        "statement": (
            f"Ours: one-sided Fisher (over-representation), is_a + part_of propagation, "
            f"{'+'.join(cfg.namespaces)}, population = every protein annotated in the namespace "
            f"(any organism), terms with {sizes} population proteins, BH over all tests of the "
            f"dictionary (q), Bonferroni within feature and namespace, alpha {cfg.alpha}."
        ),
        "settings": {
            "test": "Fisher's exact test, one-sided 'greater' (over-representation only)",
            "propagation": "is_a + part_of",
            "namespaces": list(cfg.namespaces),
            "population": "every encoded protein (any organism) with >= 1 annotation in the "
            "namespace",
            "study": f"population proteins with activation > {cfg.active_threshold}",
            "terms": f"terms with {sizes} population proteins",
            "correction": "Benjamini-Hochberg over all tests of the dictionary (q_value); "
            "Bonferroni within the feature and namespace (p_bonferroni)"
            + ("; BH of the length-stratified test (q_length)" if cfg.length_adjusted else ""),
            "alpha": cfg.alpha,
            "direction": "over-representation only",
            "annotations": "the corpus's GO annotations (Swiss-Prot 2014); alt ids mapped, "
            "obsolete ids followed to replaced_by",
        },
        "population_size": summary.get("population_size"),
        "features_with_bp_hit": with_hit,
    }


_FileKey = tuple[Path, int, int]  # path, size, modification time (ns)


class _ActivationCache:
    """The activations a worker read last, as columns (units slice features): loaded once while
    its units follow each other (units come dictionary by dictionary). Keyed by the file's size
    and modification time too: an analysis made again in this process is read again."""

    def __init__(self) -> None:
        self.key: _FileKey | None = None
        self.matrix: sp.csc_matrix | None = None

    def get(self, path: Path, n_proteins: int) -> sp.csc_matrix:
        info = path.stat()
        key = (path, info.st_size, info.st_mtime_ns)
        if key != self.key or self.matrix is None:
            self.matrix = None  # the previous dictionary's matrix goes before the next loads
            self.matrix = sp.csc_matrix(load_activations(path, n_proteins))
            self.key = key
        return self.matrix


class _Collector:
    """Partial results by dictionary; finishes a dictionary once all its units are in."""

    def __init__(self, job: _Job, units: list[_Unit]) -> None:
        self.job = job
        self.left: dict[str, int] = {}
        self.n_features: dict[str, int] = {}
        for unit in units:
            self.left[unit.name] = self.left.get(unit.name, 0) + 1
            stop = unit.features.stop
            self.n_features[unit.name] = max(self.n_features.get(unit.name, 0), stop)
        self.parts: dict[str, dict[int, list[tuple[int, PartialEnrichment]]]] = {}
        self.paper: dict[str, list[tuple[int, _PaperPart]]] = {}
        self.seconds: dict[str, float] = {}
        self.failed: set[str] = set()

    def add(
        self, unit: _Unit, part: PartialEnrichment, paper: _PaperPart | None, seconds: float
    ) -> dict[str, Any] | None:
        """Keep a unit's result; the dictionary's summary once it is finished and saved."""
        if unit.name in self.failed:
            return None
        by_variant = self.parts.setdefault(unit.name, {})
        by_variant.setdefault(unit.variant, []).append((unit.features.start or 0, part))
        if paper is not None:
            self.paper.setdefault(unit.name, []).append((unit.features.start or 0, paper))
        self.seconds[unit.name] = self.seconds.get(unit.name, 0.0) + seconds
        self.left[unit.name] -= 1
        if self.left[unit.name]:
            return None
        ordered = {
            v: [p for _, p in sorted(items, key=lambda t: t[0])] for v, items in by_variant.items()
        }
        del self.parts[unit.name]
        papers = [p for _, p in sorted(self.paper.pop(unit.name, []), key=lambda t: t[0])]
        return self.job.finish_and_save(
            unit.name, ordered, papers, self.n_features[unit.name], self.seconds[unit.name]
        )

    def fail(self, name: str) -> None:
        """A unit of ``name`` failed: drop what it has and never finish it."""
        self.failed.add(name)
        self.parts.pop(name, None)
        self.paper.pop(name, None)


def _unit_error(unit: _Unit, error: BaseException) -> RuntimeError:
    return RuntimeError(f"GO enrichment of {unit.name!r} failed: {error}")


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
    engine: Engine | None = None,
) -> dict[str, dict[str, Any]]:
    """Enrich every dictionary (controls included), write go/…, return summaries by name.

    ``control_of`` maps a dictionary to its control dictionary (e.g. the same SAE recipe on a
    randomly initialised model); controls are run like any other dictionary. ``engine`` runs
    the feature-range units: the local engine's ``go.workers`` forked processes by default.
    """
    workdir = Path(workdir)
    control_of = dict(control_of or {})
    names = list(dict.fromkeys([*dictionaries, *control_of.values()]))
    corpus = corpus if corpus is not None else _load_corpus(workdir)
    layout = RunLayout(workdir)
    ontology = load_ontology(cfg.obo_path, cfg.cache_dir or layout.go_cache)
    incidences, resolve_counts = build_incidences(ontology, corpus, cfg)
    paper = (
        paper_population(ontology, corpus.go_bp, corpus.organisms, len(corpus.accessions))
        if cfg.paper_protocol
        else None
    )
    tested = {t for i in incidences.values() for t in i.term_ids}
    write_terms(layout.go_terms, ontology, tested | set(paper.term_ids if paper else ()))
    digest = cfg.digest()
    # A dictionary's tests depend on the GO settings, its analysis and the corpus.
    corpus_stamp = read_stamp(layout.corpus.done)
    stamps = {
        name: StageUnit(f"go: {name}", layout.go_hits(name).done,
                        {"go": digest, "corpus": corpus_stamp,
                         "analysis": read_stamp(layout.analysis(name).done)},
                        outputs=(layout.go_hits(name).summary, layout.go_hits(name).hits))
        for name in names
    }  # fmt: skip
    summaries: dict[str, dict[str, Any]] = {}
    todo = []
    for name in names:  # the driver's skip/redo, per dictionary; units are its feature ranges
        if needs_run(stamps[name]):
            todo.append(name)
        else:
            summaries[name] = json.loads(layout.go_hits(name).summary.read_text())
    lengths = np.array([len(seq) for seq in corpus.sequences])
    permuted = [
        permuted_incidences(incidences, lengths, cfg.length_bins, cfg.seed + i)
        for i in range(cfg.n_permutations)
    ]
    job = _Job(layout, corpus, incidences, permuted, lengths, ontology, cfg, resolve_counts,
               stamps, paper)  # fmt: skip
    units: list[_Unit] = []
    for name in todo:
        try:
            units.extend(job.units(name))
        except (OSError, ValueError, KeyError) as error:
            raise RuntimeError(f"GO enrichment of {name!r} failed: {error}") from error
    collector = _Collector(job, units)
    workers = cfg.workers or min(os.cpu_count() or 1, 4)
    engine = engine if engine is not None else LocalEngine()
    failed: RuntimeError | None = None
    try:
        for unit, outcome in engine.map_units(_Job.run_unit, job, units, processes=workers):
            if isinstance(outcome, BrokenProcessPool):
                raise outcome
            if isinstance(outcome, BaseException):
                if failed is None:
                    failed = _unit_error(unit, outcome)
                    failed.__cause__ = outcome
                collector.fail(unit.name)
                continue
            summary = collector.add(unit, *outcome)
            if summary is not None:
                summaries[unit.name] = summary
    except BrokenProcessPool as error:
        raise RuntimeError(
            f"a GO worker process died (out of memory?) with {workers} workers; set "
            "go.workers lower and rerun: finished dictionaries are kept"
        ) from error
    if failed is not None:
        raise failed
    for name, control in control_of.items():
        summaries[name]["random_model_control"] = random_model_control(
            control, GoSummary.model_validate(summaries[control])
        )
        document = GoSummary.model_validate(summaries[name])
        write_atomic(layout.go_hits(name).summary, document.to_json())
    write_atomic(layout.go.done, json.dumps({"config": digest, "dictionaries": names}) + "\n")
    print_summaries(summaries, cfg.alpha)
    return summaries


def random_model_control(control: str, summary: GoSummary) -> dict[str, Any]:
    """The random-init control's hit rates, recorded beside the dictionary it controls."""
    return {
        "dictionary": control,
        "pct_features_with_hit_bh": summary.bh.pct_features_with_hit,
        "pct_features_with_hit_bonferroni": summary.bonferroni.pct_features_with_hit,
        "pct_features_with_hit_length_bh": (
            summary.length_bh.pct_features_with_hit if summary.length_bh else None
        ),
    }


def print_summaries(summaries: dict[str, dict[str, Any]], alpha: float) -> None:
    """A rich table: hit rates of each dictionary next to its controls."""
    table = Table(
        title=f"GO enrichment: % features with >= 1 term (corrected p < {alpha}); our protocol "
        "(strict) unless named, paper = the seed paper's (two-sided, is_a, human, BP)"
    )
    for col in ("dictionary", "features", "BH", "Bonf.", "length-adj. BH", "perm. BH",
                "perm. length-adj.", "random-model BH", "paper protocol (BP)"):  # fmt: skip
        table.add_column(col, justify="left" if col == "dictionary" else "right")
    for name, payload in summaries.items():
        s = GoSummary.model_validate(payload)
        perm, rnd = s.permutation_control, s.random_model_control
        paper = s.protocols.get("paper")
        table.add_row(
            name, str(s.n_features),
            f"{s.bh.pct_features_with_hit:.1f}",
            f"{s.bonferroni.pct_features_with_hit:.1f}",
            _fmt(s.length_bh.pct_features_with_hit if s.length_bh else None),
            _fmt(perm.mean_pct_features_with_hit_bh if perm else None),
            _fmt(perm.mean_pct_features_with_hit_length_bh if perm else None),
            _fmt(rnd.pct_features_with_hit_bh if rnd else None),
            _fmt(paper.pct_features_with_hit if paper else None),
        )  # fmt: skip
    Console().print(table)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"
