"""Publish: load a run's work directory into the store as one run, in one transaction.

Reads what the stages wrote (corpus, dictionaries, analysis, GO, explanations, concepts) and
bulk-loads it through ``app.store.bulk`` (COPY on PostgreSQL, executemany on SQLite) inside
``app.store.publish.publish_run``: a crash leaves no half run visible.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterable, Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any, cast

import numpy as np
from rich.console import Console
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from app.queries import go_alpha
from app.queries.stored import stored_concept_ids, stored_go_term_ids
from app.residue_types import ALPHABET, Dominance, is_detector
from app.stage_summaries import AnalysisSummaryDoc, GoSummary, TrainingMetrics
from app.store.bulk import bulk_insert, bulk_insert_columns, reserve_ids
from app.store.codec import encode_values
from app.store.publish import publish_run
from app.store.schema import (
    AnalysisSummary,
    Concept,
    ConceptAlignment,
    DomainEnrichment,
    Feature,
    FeatureNeighbor,
    GoEnrichment,
    GoProtocol,
    GoTerm,
    ProteinFeature,
    Run,
    Sae,
    TopExample,
)
from trainer.aa_profile import BASIS_CORPUS, AaProfile, load_profile
from trainer.analysis_files import (
    Effects,
    Examples,
    FeatureMap,
    FeatureStats,
    Neighbors,
    ProteinTop,
    load_columns,
)
from trainer.concepts.examples import label_files, store_concept_examples
from trainer.corpus import Corpus, load_corpus
from trainer.explain.labels import DomainHit, GoHit, GoHitLike, auto_labels
from trainer.explain.store_load import load_auto_labels, load_explanations
from trainer.ingest import insert_structures, load_structure_mappings, upsert_proteins
from trainer.ingest_store import structure_ids
from trainer.layout import RunLayout, SaeFiles
from trainer.worklist_publish import load_worklist

console = Console()
AA_COLUMNS = ("aa_profile", "aa_n_residues", "aa_top", "aa_top_share", "aa_detector")


def _lookup(ids: list[int], indices: np.ndarray) -> list[int]:
    """Store ids of the rows at ``indices`` (a whole column at once)."""
    return np.asarray(ids, dtype=np.int64)[np.asarray(indices, dtype=np.int64)].tolist()


def _blobs(values: np.ndarray, offsets: np.ndarray) -> list[bytes | None]:
    """Each row's per-residue values as a store blob (None when it has none): the whole array is
    encoded once and cut at the offsets, the same bytes as ``encode_values`` per row."""
    encoded = encode_values(values)
    width = len(encoded) // max(len(values), 1)
    bounds = (np.asarray(offsets, dtype=np.int64) * width).tolist()
    return [encoded[a:b] if b > a else None for a, b in pairwise(bounds)]


def _load_go_terms(session: Session, workdir: Path) -> dict[str, tuple[str, int]]:
    """Insert the GO terms the run uses that the store lacks; return id -> (name, depth)."""
    path = RunLayout(workdir).go_terms
    if not path.exists():
        return {}
    known = stored_go_term_ids(session)
    info: dict[str, tuple[str, int]] = {}
    rows = []
    with path.open(newline="") as handle:
        for rec in csv.DictReader(handle, delimiter="\t"):
            info[rec["id"]] = (rec["name"], int(rec["depth"]))
            if rec["id"] in known:
                continue
            known.add(rec["id"])
            rows.append(
                {
                    "id": rec["id"],
                    "name": rec["name"],
                    "namespace": rec["namespace"],
                    "depth": int(rec["depth"]),
                    "level": int(rec["level"]),
                    "definition": rec.get("definition") or None,
                    "parents": [p for p in (rec.get("parents") or "").split(";") if p],
                    "is_obsolete": False,
                }
            )
    bulk_insert(session, GoTerm, rows)
    return info


class DictionaryLoader:
    """Loads one dictionary's files into the open transaction."""

    def __init__(
        self,
        session: Session,
        workdir: Path,
        run: Run,
        protein_ids: list[int],
        structure_ids: list[int] | None = None,
    ):
        self.session = session
        self.workdir = workdir
        self.layout = RunLayout(workdir)
        self.run = run
        self.protein_ids = protein_ids
        self.structure_ids = structure_ids or []  # store id per structures.json row
        self.go_hits: dict[int, list[GoHit]] = {}
        self.domain_hits: dict[int, list[DomainHit]] = {}
        self.go_alpha = go_alpha(None)
        self.dominance: dict[int, Dominance] = {}
        self.aa_basis = BASIS_CORPUS
        self.n_rows = 0  # bulk-inserted rows so far (progress on a proteome-sized run)

    def load(self, name: str, known_terms: dict[str, tuple[str, int]]) -> Sae:
        sae_files = self.layout.sae(name)
        config = json.loads(sae_files.config.read_text())
        metrics = TrainingMetrics.read(sae_files.metrics).dump()
        analysis = AnalysisSummaryDoc.read_if_exists(self.layout.analysis(name).summary)
        if analysis is not None:  # the corpus distribution of per-protein FVE (for the server)
            metrics |= {"fve_median": analysis.fve_median, "fve_p05": analysis.fve_p05}
        self.go_hits, self.dominance, self.go_alpha = {}, {}, go_alpha(None)
        self.domain_hits = {}
        sae = self._sae_row(name, config, metrics, sae_files)
        feature_ids = self._features(sae, name)
        self._examples(name, feature_ids)
        self._protein_top(sae, name, feature_ids)
        self._neighbors(name, feature_ids)
        self._go(sae, name, feature_ids, known_terms)
        self.n_rows += load_worklist(self.session, self.workdir, sae, name, feature_ids,
                                     self.protein_ids, set(known_terms))  # fmt: skip
        self._domains(sae, name, feature_ids)
        self._explanations(sae, name, feature_ids)
        self._concepts(sae, name, feature_ids)
        return sae

    def load_findings(
        self, sae: Sae, name: str, feature_ids: list[int], known_terms: dict[str, tuple[str, int]]
    ) -> None:
        """Only the GO hits and concept alignments of ``name``'s files, onto its existing
        ``Sae`` and ``Feature`` rows (the explorer's tests add findings to a published run)."""
        self._go(sae, name, feature_ids, known_terms)
        self._concepts(sae, name, feature_ids)

    def _sae_row(
        self, name: str, config: dict[str, Any], metrics: dict[str, Any], sae_files: SaeFiles
    ) -> Sae:
        provenance = config["provenance"]
        dictionary = config["dictionary"]
        training = config.get("training", {})
        weights = sae_files.weights
        kind = str(training.get("kind", dictionary.get("kind")))
        sae = Sae(
            run_id=self.run.id,
            name=name,
            kind=kind,
            level=str(provenance["level"]),
            layer=int(provenance["layer"]),
            out_layer=provenance.get("out_layer"),
            d_in=int(dictionary["d_in"]),
            n_latents=int(dictionary["n_latents"]),
            k=dictionary.get("k"),
            l1_coefficient=dictionary.get("l1_coefficient") or None,
            is_control=bool(metrics.get("is_control", False)),
            control_of=metrics.get("control_of"),
            fve=metrics.get("fve"),
            mse=metrics.get("mse"),
            l0=metrics.get("l0"),
            dead_fraction=metrics.get("dead_fraction"),
            loss_recovered=metrics.get("loss_recovered"),
            metrics=metrics,
            config=config,
            weights_path=str(weights.resolve()) if weights.exists() else None,
            weights_sha256=config.get("weights_sha256"),
        )
        self.session.add(sae)
        self.session.flush()
        return sae

    def _features(self, sae: Sae, name: str) -> list[int]:
        stats = FeatureStats.load(self.layout.analysis(name).features)
        n = len(stats.n_active)
        ids = reserve_ids(self.session, Feature, n)
        # Residue level: the fraction of residues a feature fires on; protein level: of proteins.
        density = stats.residue_density if sae.level == "residue" else stats.density
        columns = {
            "id": ids,
            "index": list(range(n)),
            "density": density.astype(float).tolist(),
            "n_active": stats.n_active.astype(np.int64).tolist(),
            "max_activation": stats.max_activation.astype(float).tolist(),
            "mean_activation": stats.mean_activation.astype(float).tolist(),
            "hist_edges": [
                [round(x, 5) for x in edges] for edges in stats.hist_edges.astype(float).tolist()
            ],
            "hist_counts": stats.hist_counts.astype(np.int64).tolist(),
            "is_dead": stats.is_dead.astype(bool).tolist(),
            **self._map_columns(name, n),
            **self._aa_columns(name, n),
            "lm_effect": self._effect_column(name, n),
        }
        nulls = dict.fromkeys(("pattern_class", "auto_label", "auto_label_source",
                               "explanation_score"))  # fmt: skip
        self.n_rows += bulk_insert_columns(self.session, Feature, columns,
                                           {"sae_id": sae.id, "n_go_hits": 0, **nulls})  # fmt: skip
        return ids

    def _aa_columns(self, name: str, n: int) -> dict[str, list[Any]]:
        """The amino-acid profile columns (None throughout where the analysis has none), and
        each profiled feature's dominant type for its label (``self.dominance``)."""
        profile = load_profile(self.layout.analysis(name).aa_profile)
        if profile is None:
            return {key: [None] * n for key in AA_COLUMNS}
        if profile.mass.shape[0] != n:
            raise ValueError(
                f"{name}: amino-acid profile of {profile.mass.shape[0]} features, not {n}"
            )
        self.aa_basis = profile.basis
        return profile_columns(profile, self.dominance)

    def _effect_column(self, name: str, n: int) -> list[dict[str, Any] | None]:
        """Per latent, what it makes the model predict (``trainer.effects``), or None."""
        path = self.layout.analysis(name).effects
        if not path.exists():
            return [None] * n
        eff = Effects.load(path)
        if eff.mean.shape[0] != n:
            raise ValueError(f"{path}: effects of {eff.mean.shape[0]} latents for {n}")
        column: list[dict[str, Any] | None] = []
        for f in range(n):
            if eff.n_examples[f] == 0:
                column.append(None)
                continue
            column.append({
                "mean": [round(float(v), 4) for v in eff.mean[f]],
                "std": [round(float(v), 4) for v in eff.std[f]],
                "n_examples": int(eff.n_examples[f]),
                "activation": round(float(eff.activation[f]), 4),
                "read_at": str(eff.read_at) if eff.read_at is not None else "peak residue",
            })  # fmt: skip
        return column

    def _map_columns(self, name: str, n: int) -> dict[str, list[float | None]]:
        """Feature-map coordinates (None where a latent is off the map, or the analysis made no
        map: the neuron baseline, runs analysed before the map existed)."""
        path = self.layout.analysis(name).feature_map
        if not path.exists():
            return {"map_x": [None] * n, "map_y": [None] * n}
        xy = FeatureMap.load(path).xy.astype(float)
        if xy.shape != (n, 2):
            raise ValueError(f"{path}: map of shape {xy.shape} for {n} features")
        x, y = (
            [None if v != v else v for v in column]  # NaN: off the map
            for column in (xy[:, 0].tolist(), xy[:, 1].tolist())
        )
        return {"map_x": x, "map_y": y}

    def _examples(self, name: str, feature_ids: list[int]) -> None:
        ex = Examples.load(self.layout.analysis(name).examples)
        columns = {
            "feature_id": _lookup(feature_ids, ex.feature),
            "protein_id": _lookup(self.protein_ids, ex.protein),
            "bin": ex.bin.tolist(),
            "rank": ex.rank.tolist(),
            "activation": ex.activation.astype(float).tolist(),
            "max_position": ex.max_position.tolist(),
            "residue_values": _blobs(ex.values, ex.offsets),
            **self._example_structures(ex),
        }
        self.n_rows += bulk_insert_columns(self.session, TopExample, columns)

    def _example_structures(self, ex: Examples) -> dict[str, list[Any]]:
        """Each example's best chain (store id), its activation share and whether it resolves
        the peak; None where the protein has no chain or the analysis predates them."""
        n = len(ex.feature)
        if ex.structure is None or ex.structure_share is None or ex.structure_peak_covered is None:
            return dict.fromkeys(("structure_id", "structure_share", "structure_peak_covered"),
                                 [None] * n)  # fmt: skip
        rows = ex.structure.astype(np.int64).tolist()
        has = [r >= 0 for r in rows]
        share = ex.structure_share.astype(float).tolist()
        peak = ex.structure_peak_covered.astype(bool).tolist()
        return {
            "structure_id": [self.structure_ids[r] if h else None
                             for r, h in zip(rows, has, strict=True)],
            "structure_share": [v if h and v == v else None
                                for v, h in zip(share, has, strict=True)],
            "structure_peak_covered": [p if h else None for p, h in zip(peak, has, strict=True)],
        }  # fmt: skip

    def _protein_top(self, sae: Sae, name: str, feature_ids: list[int]) -> None:
        pt = ProteinTop.load(self.layout.analysis(name).protein_top)
        columns = {
            "protein_id": _lookup(self.protein_ids, pt.protein),
            "feature_id": _lookup(feature_ids, pt.feature),
            "rank": pt.rank.tolist(),
            "activation": pt.activation.astype(float).tolist(),
            "residue_values": _blobs(pt.values, pt.offsets),
        }
        self.n_rows += bulk_insert_columns(self.session, ProteinFeature, columns,
                                           {"sae_id": sae.id})  # fmt: skip

    def _neighbors(self, name: str, feature_ids: list[int]) -> None:
        nb = Neighbors.load(self.layout.analysis(name).neighbors)
        idx, cos = nb.indices, nb.cosines
        n, width = idx.shape
        columns = {
            "feature_id": _lookup(feature_ids, np.repeat(np.arange(n), width)),
            "neighbor_id": _lookup(feature_ids, idx.reshape(-1)),
            "rank": np.tile(np.arange(width), n).tolist(),
            "cosine": cos.reshape(-1).astype(float).tolist(),
        }
        self.n_rows += bulk_insert_columns(self.session, FeatureNeighbor, columns)

    def _summary(self, sae: Sae, kind: str, path: Path) -> dict[str, Any] | None:
        """Store a stage's summary.json for the SAE; returns it (None where absent)."""
        if not path.exists():
            return None
        payload: dict[str, Any] = json.loads(path.read_text())
        self.session.add(AnalysisSummary(sae_id=sae.id, kind=kind, payload=payload))
        return payload

    def _go(
        self, sae: Sae, name: str, feature_ids: list[int], known_terms: dict[str, tuple[str, int]]
    ) -> None:
        go_files = self.layout.go_hits(name)
        payload = self._summary(sae, "go", go_files.summary)
        go_summary = GoSummary.model_validate(payload) if payload is not None else None
        self.go_alpha = go_alpha(GoSummary.from_payload(payload))
        self._summary(sae, "analysis", self.layout.analysis(name).summary)
        if not go_files.hits.exists():
            return
        hits = load_columns(go_files.hits)
        go_ids = hits["go_id"].astype(str).tolist()
        keep = np.array([g in known_terms for g in go_ids], dtype=bool)
        names = ("namespace", "study_hits", "study_size", "pop_hits", "pop_size",
                 "fold_enrichment", "p_value", "q_value", "p_bonferroni", "is_most_specific")  # fmt: skip
        # Columns as Python lists once (numpy scalars per row cost more than the inserts).
        col: dict[str, list[Any]] = {key: hits[key][keep].tolist() for key in names}
        # Hit files written before the length-stratified test have no p_length / q_length.
        has_length = "q_length" in hits
        for key in ("p_length", "q_length"):
            col[key] = hits[key][keep].tolist() if has_length else [None] * len(col["p_value"])
        feature_index = hits["feature_index"][keep]
        ids = [g for g, k in zip(go_ids, keep.tolist(), strict=True) if k]
        for f, go_id, namespace, q, q_len, fold, specific in zip(
            feature_index.tolist(), ids, col["namespace"], col["q_value"], col["q_length"],
            col["fold_enrichment"], col["is_most_specific"], strict=True,
        ):  # fmt: skip
            name_, depth = known_terms[go_id]
            self.go_hits.setdefault(f, []).append(
                GoHit(go_id=go_id, name=name_, namespace=namespace, depth=depth, q_value=q,
                      fold_enrichment=fold, is_most_specific=specific, q_length=q_len)
            )  # fmt: skip
        col["feature_id"] = _lookup(feature_ids, feature_index)
        col["go_id"] = ids
        col["odds_ratio"] = [o if math.isfinite(o) else None
                             for o in hits["odds_ratio"][keep].tolist()]  # fmt: skip
        col["method"] = (hits["method"][keep].astype(str).tolist() if "method" in hits
                         else ["fisher_greater"] * len(ids))  # fmt: skip
        self.n_rows += bulk_insert_columns(self.session, GoEnrichment, col, {"sae_id": sae.id})
        n_features = len(feature_ids)
        counts = np.bincount(feature_index.astype(np.int64), minlength=n_features)
        counts_length = np.zeros(n_features, dtype=np.int64)
        if has_length:  # every feature of the SAE was tested: 0, not unknown, where no hit
            alpha = self.go_alpha
            adjusted = feature_index[hits["q_length"][keep] < alpha].astype(np.int64)
            counts_length = np.bincount(adjusted, minlength=n_features)
            self.session.execute(
                update(Feature).where(Feature.sae_id == sae.id).values(n_go_hits_length=0)
            )
        hit = np.flatnonzero(counts).tolist()
        if hit:  # one executemany (ORM bulk update by primary key), not a statement per feature
            self.session.execute(
                update(Feature),
                [
                    {"id": feature_ids[f], "n_go_hits": int(counts[f]),
                     **({"n_go_hits_length": int(counts_length[f])} if has_length else {})}
                    for f in hit
                ],
            )  # fmt: skip
        self._go_paper(sae, name, feature_ids, known_terms, go_summary)

    def _go_paper(
        self,
        sae: Sae,
        name: str,
        feature_ids: list[int],
        known_terms: dict[str, tuple[str, int]],
        go_summary: GoSummary | None,
    ) -> None:
        """The GO protocols' statements and settings (GoProtocol), and the "paper" protocol's
        hits (GoEnrichment rows with protocol "paper": two-sided p, no BH, no length test)."""
        for protocol, block in (go_summary.protocols if go_summary else {}).items():
            figures = block.model_dump(exclude_unset=True,
                                       exclude={"statement", "settings"})  # fmt: skip
            self.session.add(GoProtocol(sae_id=sae.id, name=protocol, statement=block.statement,
                                        settings=block.settings, figures=figures))  # fmt: skip
        path = self.layout.go_hits(name).paper_hits
        if not path.exists():
            return
        hits = load_columns(path)
        go_ids = hits["go_id"].astype(str).tolist()
        keep = np.array([g in known_terms for g in go_ids], dtype=bool)
        names = ("namespace", "study_hits", "study_size", "pop_hits", "pop_size",
                 "fold_enrichment", "p_value", "p_bonferroni", "is_most_specific")  # fmt: skip
        col: dict[str, list[Any]] = {key: hits[key][keep].tolist() for key in names}
        n = len(col["p_value"])
        feature_index = hits["feature_index"][keep].astype(np.int64)
        col.update(
            feature_id=_lookup(feature_ids, feature_index),
            go_id=[g for g, k in zip(go_ids, keep.tolist(), strict=True) if k],
            odds_ratio=[o if math.isfinite(o) else None for o in hits["odds_ratio"][keep].tolist()],
            q_value=[None] * n, p_length=[None] * n, q_length=[None] * n,
            method=["fisher_two_sided+bonferroni"] * n, protocol=["paper"] * n,
        )  # fmt: skip
        self.n_rows += bulk_insert_columns(self.session, GoEnrichment, col, {"sae_id": sae.id})
        # Every feature was tested (or had no human protein to test): 0, not unknown.
        self.session.execute(
            update(Feature).where(Feature.sae_id == sae.id).values(n_go_hits_paper=0)
        )
        counts = np.bincount(feature_index, minlength=len(feature_ids))
        hit = np.flatnonzero(counts).tolist()
        if hit:
            self.session.execute(
                update(Feature),
                [{"id": feature_ids[f], "n_go_hits_paper": int(counts[f])} for f in hit],
            )

    def _domains(self, sae: Sae, name: str, feature_ids: list[int]) -> None:
        """Pfam / PROSITE hits of both protocols (``trainer.domains``), each feature's counts
        and top family, and the hits the offline label may use (``self.domain_hits``)."""
        files = self.layout.domain_hits(name)
        summary = self._summary(sae, "domains", files.summary)
        if summary is None or not files.hits.exists():
            return
        alpha = float(summary.get("alpha", self.go_alpha))
        n_features = len(feature_ids)
        counts = np.zeros(n_features, np.int64)
        counts_length = np.zeros(n_features, np.int64)
        top: dict[int, tuple[float, float, str, str]] = {}
        for protocol, file in (("strict", files.hits), ("paper", files.paper_hits)):
            if not file.exists():
                continue
            hits = load_columns(file)
            n = int(hits["p_value"].size)
            col: dict[str, list[Any]] = {
                key: hits[key].tolist() if key in hits else [None] * n
                for key in ("accession", "source", "study_hits", "study_size", "pop_hits",
                            "pop_size", "fold_enrichment", "p_value", "q_value", "p_bonferroni",
                            "p_length", "q_length")
            }  # fmt: skip
            index = hits["feature_index"].astype(np.int64)
            col["feature_id"] = _lookup(feature_ids, index)
            col["odds_ratio"] = [o if math.isfinite(o) else None
                                 for o in hits["odds_ratio"].tolist()]  # fmt: skip
            col["protocol"] = [protocol] * n
            self.n_rows += bulk_insert_columns(self.session, DomainEnrichment, col,
                                               {"sae_id": sae.id})  # fmt: skip
            if protocol != "strict":
                continue
            for f, acc, src, q, ql, fold in zip(index.tolist(), col["accession"], col["source"],
                                                col["q_value"], col["q_length"],
                                                col["fold_enrichment"], strict=True):  # fmt: skip
                beyond = ql is None or ql < alpha
                counts[f] += q < alpha
                counts_length[f] += q < alpha and beyond
                if q < alpha and beyond:
                    key = (q if ql is None else ql, -fold, acc, src)
                    top[f] = min(top.get(f, key), key)
                self.domain_hits.setdefault(f, []).append(
                    DomainHit(accession=acc, source=src, q_value=q, fold_enrichment=fold,
                              q_length=ql)
                )  # fmt: skip
        self.session.execute(
            update(Feature).where(Feature.sae_id == sae.id)
            .values(n_domain_hits=0, n_domain_hits_length=0)
        )  # fmt: skip
        hit = np.flatnonzero(counts).tolist()
        if hit:
            self.session.execute(
                update(Feature),
                [{"id": feature_ids[f], "n_domain_hits": int(counts[f]),
                  "n_domain_hits_length": int(counts_length[f]),
                  "top_domain": top[f][2] if f in top else None,
                  "top_domain_source": top[f][3] if f in top else None} for f in hit],
            )  # fmt: skip

    def _explanations(self, sae: Sae, name: str, feature_ids: list[int]) -> None:
        """Claude explanations + scores (explain stage), and offline labels from GO hits."""
        by_index = dict(enumerate(feature_ids))
        load_explanations(self.session, self.workdir, name, sae.id, by_index)
        hits = cast(Mapping[int, Iterable[GoHitLike]], self.go_hits)
        basis = "activation" if self.aa_basis == BASIS_CORPUS else "attribution"
        labels = auto_labels(hits, {}, alpha=self.go_alpha, dominance=self.dominance, basis=basis,
                             domains=self.domain_hits)  # fmt: skip
        load_auto_labels(self.session, labels, by_index)

    def _concepts(self, sae: Sae, name: str, feature_ids: list[int]) -> None:
        c_files = self.layout.concept_results(name)
        summary = self._summary(sae, "concepts", c_files.summary)
        path = c_files.alignments
        if not path.exists():
            return
        concept_ids = _concept_ids(self.session, self.workdir)
        al = load_columns(path)
        known = np.array([str(c) in concept_ids for c in al["concept"]], dtype=bool)
        columns: dict[str, list[Any]] = {
            "feature_id": _lookup(feature_ids, al["feature_index"][known]),
            "concept_id": [concept_ids[str(c)] for c in al["concept"][known]],
            "split": al["split"][known].astype(str).tolist(),
        }
        for key in ("threshold", "precision", "recall", "f1", "site_recall"):
            columns[key] = al[key][known].astype(float).tolist()
        self.n_rows += bulk_insert_columns(self.session, ConceptAlignment, columns,
                                           {"sae_id": sae.id})  # fmt: skip
        if summary is not None:  # the page's labelled examples, from the stage's label files
            concepts_cfg = (self.run.config or {}).get("concepts") or {}
            files = label_files(concepts_cfg.get("label_dir"), _concept_records(self.workdir))
            self.n_rows += store_concept_examples(self.session, sae.id, summary, feature_ids,
                                                  concept_ids, files)  # fmt: skip


def profile_columns(profile: AaProfile, dominance: dict[int, Dominance]) -> dict[str, list[Any]]:
    """``Feature``'s profile columns from an analysis profile; fills ``dominance`` (feature
    index -> its dominant type) for every feature with any mass."""
    shares = profile.shares()
    top = np.argmax(shares, axis=1)
    top_share = shares[np.arange(len(top)), top].astype(float)
    has_mass = profile.mass.sum(axis=1) > 0
    columns: dict[str, list[Any]] = {key: [] for key in AA_COLUMNS}
    for f, (row, t, s, n, live) in enumerate(zip(shares.tolist(), top.tolist(), top_share.tolist(),
                                                 profile.n_residues.tolist(), has_mass.tolist(),
                                                 strict=True)):  # fmt: skip
        if not live:
            for key in columns:
                columns[key].append(None)
            continue
        d = Dominance(letter=ALPHABET[t], share=s, background=float(profile.background[t]),
                      n_residues=int(n))  # fmt: skip
        dominance[f] = d
        columns["aa_profile"].append([round(v, 4) for v in row])
        columns["aa_n_residues"].append(int(n))
        columns["aa_top"].append(d.letter)
        columns["aa_top_share"].append(s)
        columns["aa_detector"].append(is_detector(s, d.background, int(n)))
    return columns


def _concept_records(workdir: Path) -> list[dict[str, Any]]:
    """The concepts stage's ``concepts.json`` (none where the stage did not run)."""
    path = RunLayout(workdir).concept_records
    return list(json.loads(path.read_text())) if path.exists() else []


def _concept_ids(session: Session, workdir: Path) -> dict[str, int]:
    existing = stored_concept_ids(session)
    for rec in _concept_records(workdir):
        if rec["name"] in existing:
            continue
        concept = Concept(
            name=rec["name"],
            description=rec.get("description"),
            source=rec.get("source"),
            n_chains=int(rec.get("n_chains", 0)),
            n_residues=int(rec.get("n_residues", 0)),
            n_positive=int(rec.get("n_positive", 0)),
        )
        session.add(concept)
        session.flush()
        existing[concept.name] = concept.id
    return existing


def publish(
    engine: Engine,
    workdir: Path,
    run: Run,
    dictionaries: list[str],
    *,
    replace: bool = True,
) -> int:
    """Load ``workdir`` into the store as ``run`` (atomically); return the run id."""
    corpus: Corpus = load_corpus(workdir)
    structures = load_structure_mappings(workdir)

    def load(session: Session, run_row: Run) -> None:
        by_accession = upsert_proteins(session, corpus)
        protein_ids = [by_accession[a] for a in corpus.accessions]
        insert_structures(session, structures, by_accession)
        chain_ids = structure_ids(session, structures)
        known_terms = _load_go_terms(session, workdir)
        loader = DictionaryLoader(session, workdir, run_row, protein_ids, chain_ids)
        for i, name in enumerate(dictionaries, 1):
            started, rows_before = time.perf_counter(), loader.n_rows
            loader.load(name, known_terms)
            console.print(f"publish: {name} ({i}/{len(dictionaries)}): "
                          f"{loader.n_rows - rows_before:,} rows in "
                          f"{time.perf_counter() - started:.1f} s")  # fmt: skip

    run.n_proteins = len(corpus.accessions)
    return publish_run(engine, run, load, replace=replace)
