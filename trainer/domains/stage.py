"""Domain-family enrichment: every feature against Pfam and PROSITE families, with the GO
stage's tests, corrections and controls (a family is a term of an ontology without edges).

Reads the corpus, ``analysis/{name}/protein_activations.npz`` and the family tables; writes
``domains/families.tsv``, ``domains/{name}/hits.npz`` (strict), ``paper_hits.npz`` (the seed
paper's protocol), ``summary.json`` and ``DONE`` (a stamp: redone only when an input changed).

- strict: ``trainer.go.enrichment`` as is (one-sided Fisher, BH over every test of the
  dictionary, Bonferroni within feature and source, the length-stratified test), families of
  >= ``min_family_size`` human proteins; the permutation control shuffles family sets within
  length bins (``trainer.go.controls``), the random-init control is the control dictionary.
- paper: ``trainer.go.paper.paper_tests`` (two-sided Fisher, Bonferroni over every family
  present, within the feature; depletion counts) on the same population.
Population of both: the corpus's human proteins (``trainer.domains.families``); the GO stage's
threshold, alpha, length bins, permutations and seed apply.
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

from app.atomic_write import atomic_file, write_atomic
from app.stage_summaries import DomainsSummary
from trainer.analysis_files import save_columns
from trainer.domains.families import (
    SOURCES,
    family_incidences,
    protein_families,
    read_gene_families,
    read_protein_genes,
)
from trainer.go.annotations import NamespaceIncidence
from trainer.go.controls import permuted_incidences
from trainer.go.enrichment import EnrichmentResult, effect_sizes, enrich_features, finish_enrichment
from trainer.go.paper import PAPER_ALPHA, PaperPopulation, paper_tests
from trainer.go.stage import GoConfig, load_activations
from trainer.go.summary import pct
from trainer.layout import AnalysisFiles, HitFiles, RunLayout
from trainer.stage_driver import StageUnit, run_unit
from trainer.stamps import read_stamp

DOMAIN_COLUMNS = (
    "feature_index", "accession", "source", "study_hits", "study_size", "pop_hits", "pop_size",
    "odds_ratio", "fold_enrichment", "p_value", "q_value", "p_bonferroni", "p_length", "q_length",
)  # fmt: skip
POPULATION = "the corpus's human proteins (Homo sapiens), with or without a family"


class DomainConfig(BaseModel):
    """Where the families come from, and which are tested (the rest is the GO stage's)."""

    families_path: Path = Path("../shared/data/annotations/human_domains_2022.tsv.gz")
    # accession -> entrez_gene of the human proteins (the join to the families)
    proteins_path: Path = Path("../shared/data/proteins/human_sprot2014.tsv.gz")
    min_family_size: int = Field(3, ge=1)  # human proteins with the family (strict protocol)
    paper_protocol: bool = True


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def domain_rates(cols: dict[str, np.ndarray], n_features: int, n_active: int, alpha: float
                 ) -> dict[str, Any]:  # fmt: skip
    """Features with >= 1 significant family under each correction, overall and per source."""
    out: dict[str, Any] = {}
    for label, column in (("bh", "q_value"), ("bonferroni", "p_bonferroni"),
                          ("length_bh", "q_length")):  # fmt: skip
        if column not in cols:
            continue
        sig = cols[column] < alpha
        n_any = int(np.unique(cols["feature_index"][sig]).size)
        out[label] = {
            "features_with_hit": n_any,
            "pct_features_with_hit": pct(n_any, n_features),
            "pct_active_features_with_hit": pct(n_any, n_active),
            "features_with_hit_by_source": {
                s: int(np.unique(cols["feature_index"][sig & (cols["source"] == s)]).size)
                for s in SOURCES
            },
            "n_significant_tests": int(sig.sum()),
        }
    return out


def strict_columns(result: EnrichmentResult) -> dict[str, np.ndarray]:
    """The GO result's columns under the family names (``DOMAIN_COLUMNS``)."""
    c = {**result.columns, "accession": result.columns["go_id"],
         "source": result.columns["namespace"]}  # fmt: skip
    return {name: c[name] for name in DOMAIN_COLUMNS if name in c}


def paper_columns(tests: dict[str, np.ndarray], pop: PaperPopulation) -> dict[str, np.ndarray]:
    """The paper protocol's Bonferroni-significant tests, with the family columns."""
    accs = np.asarray(pop.term_ids, dtype=str)[tests["term"]] if pop.term_ids else np.empty(0, str)
    nn = np.full(tests["k"].size, pop.size, np.int64)
    odds, fold = effect_sizes(tests["k"], tests["n"], tests["K"], nn)
    cols = {
        "feature_index": tests["feature_index"], "accession": accs,
        "source": np.asarray(["Pfam" if a.startswith("PF") else "PROSITE" for a in accs], str),
        "study_hits": tests["k"], "study_size": tests["n"], "pop_hits": tests["K"],
        "pop_size": nn, "odds_ratio": odds, "fold_enrichment": fold, "p_value": tests["p"],
        "p_bonferroni": np.minimum(tests["p"] * len(pop.term_ids), 1.0),
    }  # fmt: skip
    order = np.lexsort((cols["accession"], cols["p_value"], cols["feature_index"]))
    return {k: v[order] for k, v in cols.items()}


def save_hit_columns(path: Path, cols: dict[str, np.ndarray]) -> None:
    """Plain arrays (loads without pickle), written atomically."""
    out = dict(cols)
    out["accession"] = out["accession"].astype("U16")
    out["source"] = out["source"].astype("U8")
    save_columns(path, out)


def paper_population(incs: dict[str, NamespaceIncidence]) -> PaperPopulation:
    """Every family of every source as one term list (the paper protocol tests each one)."""
    first = next(iter(incs.values()))
    matrix = sp.csr_matrix(sp.hstack([inc.matrix for inc in incs.values()]))
    terms = [t for inc in incs.values() for t in inc.term_ids]
    return PaperPopulation(first.protein_rows, terms, matrix, {})


def run_domain_stage(
    workdir: Path,
    cfg: DomainConfig,
    go: GoConfig,
    *,
    dictionaries: list[str],
    control_of: dict[str, str] | None = None,
    corpus: Any = None,
) -> dict[str, dict[str, Any]]:
    """Test every dictionary (controls included) against the families; summaries by name."""
    workdir = Path(workdir)
    control_of = dict(control_of or {})
    names = list(dict.fromkeys([*dictionaries, *control_of.values()]))
    if corpus is None:
        from trainer.corpus import load_corpus

        corpus = load_corpus(workdir)
    for path in (cfg.families_path, cfg.proteins_path):
        if not Path(path).exists():
            raise FileNotFoundError(f"domains: {path} not found")
    rows, fams = protein_families(
        corpus.accessions, corpus.organisms, read_protein_genes(cfg.proteins_path),
        read_gene_families(cfg.families_path),
    )  # fmt: skip
    every = family_incidences(rows, fams, min_size=1)
    incs = {s: inc.restrict_terms(inc.term_sizes() >= cfg.min_family_size)
            for s, inc in every.items()}  # fmt: skip
    lengths = np.array([len(s) for s in corpus.sequences])
    layout = RunLayout(workdir)
    layout.domains.dir.mkdir(parents=True, exist_ok=True)
    _write_families(layout.domain_families, every, cfg.min_family_size)
    inputs = {
        "domains": json.loads(cfg.model_dump_json(exclude={"families_path", "proteins_path"})),
        "files": [_file_digest(cfg.families_path), _file_digest(cfg.proteins_path)],
        "go": go.digest(), "corpus": read_stamp(layout.corpus.done),
    }  # fmt: skip
    permuted = [permuted_incidences(incs, lengths, go.length_bins, go.seed + i)
                for i in range(go.n_permutations)]  # fmt: skip
    paper_pop = paper_population(every) if cfg.paper_protocol else None
    summaries: dict[str, dict[str, Any]] = {}
    for name in names:
        files = layout.domain_hits(name)
        analysis = layout.analysis(name)
        unit = StageUnit(f"domains: {name}", files.done,
                         {**inputs, "analysis": read_stamp(analysis.done)},
                         outputs=(files.summary, files.hits))  # fmt: skip

        def test(files: HitFiles = files, analysis: AnalysisFiles = analysis) -> dict[str, Any]:
            acts = load_activations(analysis.protein_activations, len(corpus.accessions))
            summary = _run_one(files, acts, incs, permuted, paper_pop, lengths, go)
            summary["population"] = POPULATION
            write_atomic(files.summary, DomainsSummary.model_validate(summary).to_json())
            return summary

        summaries[name] = run_unit(unit, test, load=partial(_read_summary, files))
    for name, control in control_of.items():
        summaries[name]["random_model_control"] = random_model_control(
            control, DomainsSummary.model_validate(summaries[control])
        )
        document = DomainsSummary.model_validate(summaries[name])
        write_atomic(layout.domain_hits(name).summary, document.to_json())
    write_atomic(layout.domains.done, json.dumps({"dictionaries": names}) + "\n")
    return summaries


def random_model_control(control: str, summary: DomainsSummary) -> dict[str, Any]:
    """The random-init control dictionary's rates, recorded beside a trained dictionary's."""
    rates = {"bh": summary.bh, "bonferroni": summary.bonferroni, "length_bh": summary.length_bh}
    return {
        "dictionary": control,
        **{f"pct_features_with_hit_{k}": None if r is None else r.pct_features_with_hit
           for k, r in rates.items()},
    }  # fmt: skip


def _read_summary(files: HitFiles) -> dict[str, Any]:
    return DomainsSummary.read(files.summary).dump()


def _run_one(
    files: HitFiles,
    acts: Any,
    incs: dict[str, NamespaceIncidence],
    permuted: list[dict[str, NamespaceIncidence]],
    paper_pop: PaperPopulation | None,
    lengths: np.ndarray,
    go: GoConfig,
) -> dict[str, Any]:
    started = time.perf_counter()
    files.dir.mkdir(parents=True, exist_ok=True)
    n_features = int(acts.shape[1])

    def test(incidences: dict[str, NamespaceIncidence]) -> EnrichmentResult:
        part = enrich_features(
            acts, incidences, threshold=go.active_threshold, alpha=go.alpha,
            block_size=go.block_size, lengths=lengths, n_length_bins=go.length_bins,
            length_adjusted=go.length_adjusted,
        )  # fmt: skip
        return finish_enrichment(
            [part], incidences, None, n_features=n_features, alpha=go.alpha,
            methods=tuple(go.methods), length_adjusted=go.length_adjusted,
        )  # fmt: skip

    result = test(incs)
    cols = strict_columns(result)
    save_hit_columns(files.hits, cols)
    perms = [strict_columns(test(p)) for p in permuted]
    summary: dict[str, Any] = {
        "n_features": n_features,
        "n_active_features": result.n_active_features,
        "n_tests": result.n_tests,
        "alpha": go.alpha,
        "population_size": {s: inc.pop_size for s, inc in incs.items()},
        "families_tested": {s: len(inc.term_ids) for s, inc in incs.items()},
        **domain_rates(cols, n_features, result.n_active_features, go.alpha),
        "permutation_control": {
            "n_permutations": go.n_permutations, "length_bins": go.length_bins, "seed": go.seed,
            "permutations": [domain_rates(p, n_features, result.n_active_features, go.alpha)
                             for p in perms],
        },
    }  # fmt: skip
    files.paper_hits.unlink(missing_ok=True)
    if paper_pop is not None:
        paper = paper_columns(paper_tests(acts, paper_pop, alpha=PAPER_ALPHA), paper_pop)
        save_hit_columns(files.paper_hits, paper)
        sig = paper["p_bonferroni"] < PAPER_ALPHA
        summary["paper"] = {
            "population_size": paper_pop.size,
            "families_tested": len(paper_pop.term_ids),
            "features_with_hit": int(np.unique(paper["feature_index"][sig]).size),
            "features_with_enriched_hit": int(
                np.unique(paper["feature_index"][sig & (paper["fold_enrichment"] > 1)]).size
            ),
        }
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def _write_families(path: Path, incs: dict[str, NamespaceIncidence], min_size: int) -> None:
    """domains/families.tsv: every family present among the human proteins, with its size."""
    with atomic_file(path, "w") as handle:
        handle.write("accession\tsource\thuman_proteins\ttested_strict\n")
        for source, inc in incs.items():
            for acc, size in zip(inc.term_ids, inc.term_sizes(), strict=True):
                handle.write(f"{acc}\t{source}\t{int(size)}\t{int(size >= min_size)}\n")
