"""The demo store plus real findings: a second dictionary, GO summaries and concept alignments.

On a copy of the ``demo_store`` run (mini ESM2 layer-3 neurons, 120 human proteins):

- ``L3-top16``: each residue's 16 strongest ReLU'd layer-3 neurons (a fixed sparse dictionary,
  kind ``topk``), with its real fidelity against the signed layer (FVE, L0, dead fraction),
  feature statistics and top examples;
- GO (``tests/go_real``) of both dictionaries over the proteins' real BP annotations, with a
  protein-shuffled permutation control, written as the GO stage writes it;
- the concepts stage (``trainer.concepts``) on real label files for both dictionaries;

GO hits and concept alignments reach the store through ``trainer.publish.DictionaryLoader``
(the publisher's own loader), not through rows built here.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.store.bulk import bulk_insert, reserve_ids
from app.store.codec import encode_values
from app.store.engine import make_engine
from app.store.schema import (
    Feature,
    GoTerm,
    Protein,
    Run,
    Sae,
    TopExample,
)
from tests.go_real import enrich_columns, go_levels, significant_hits, summarize
from trainer.concepts import ConceptsConfig, run_concepts_stage
from trainer.concepts.neurons import EsmNeurons
from trainer.publish import DictionaryLoader

LAYER = 3
TOP_K = 16
CONCEPTS = ["gpsite_DNA", "gpsite_PRO", "scannet_BCE"]
MODEL = "models/esm2_t4_2M_sprot14mini.pt"


@dataclass
class FindingsStore:
    url: str
    run_id: int
    run_name: str
    sae_ids: dict[str, int]
    concepts: list[str]
    summaries: dict[str, dict[str, dict]]  # type: ignore[type-arg]  # kind -> dictionary -> payload


def top_k(acts: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Keep each residue's k largest values (ties at the k-th all kept), zero the rest."""
    cut = np.sort(acts, axis=1)[:, [-k]]
    return np.where(acts >= cut, acts, 0.0).astype(np.float32)


def _insert_top16(session: Session, run: Run, residues: list[np.ndarray]) -> Sae:
    relu = [np.maximum(r, 0.0) for r in residues]
    sparse = [top_k(r) for r in relu]
    full = np.concatenate(residues)
    recon = np.concatenate(sparse)
    fve = 1 - ((full - recon) ** 2).sum() / ((full - full.mean(0)) ** 2).sum()
    protein_max = np.stack([s.max(0) for s in sparse])
    d = full.shape[1]
    sae = Sae(
        run_id=run.id, name=f"L{LAYER}-top{TOP_K}", kind="topk", level="residue", layer=LAYER,
        d_in=d, n_latents=d, k=TOP_K, fve=float(fve), l0=float((recon > 0).sum(1).mean()),
        dead_fraction=float((protein_max.max(0) <= 0).mean()), loss_recovered=None,
        metrics={}, config={"note": f"top-{TOP_K} ReLU'd layer-{LAYER} neurons per residue"},
    )  # fmt: skip
    session.add(sae)
    session.flush()
    fids = reserve_ids(session, Feature, d)
    pids = list(session.scalars(select(Protein.id).order_by(Protein.id)))
    feats, examples = [], []
    for f in range(d):
        col = protein_max[:, f]
        feats.append({
            "id": fids[f], "sae_id": sae.id, "index": f, "density": float((col > 0).mean()),
            "n_active": int((col > 0).sum()), "max_activation": float(col.max()),
            "mean_activation": float(col[col > 0].mean()) if (col > 0).any() else 0.0,
            "hist_edges": [], "hist_counts": [], "is_dead": bool(col.max() <= 0),
            "pattern_class": None, "auto_label": None, "auto_label_source": None,
            "explanation_score": None, "n_go_hits": 0,
        })  # fmt: skip
        for rank, p in enumerate(np.argsort(-col, kind="stable")[:10]):
            if col[p] > 0:
                examples.append({
                    "feature_id": fids[f], "protein_id": pids[p], "bin": "top", "rank": rank,
                    "activation": float(col[p]), "max_position": int(sparse[p][:, f].argmax()),
                    "residue_values": encode_values(sparse[p][:, f]),
                })  # fmt: skip
    bulk_insert(session, Feature, feats)
    bulk_insert(session, TopExample, examples)
    return sae


def build_findings_store(shared: Path, demo_url: str, workdir: Path) -> FindingsStore:
    torch.set_num_threads(1)
    db = workdir / "findings.sqlite"
    shutil.copy(demo_url.removeprefix("sqlite:///"), db)
    url = f"sqlite:///{db}"
    engine = make_engine(url)
    neurons = EsmNeurons(shared / MODEL, [LAYER])
    with Session(engine) as session, session.begin():
        run = session.scalars(select(Run)).one()
        proteins = list(session.scalars(select(Protein).order_by(Protein.id)))
        seqs = [p.sequence for p in proteins]
        residues = [r for i in range(0, len(seqs), 16)
                    for r in neurons.representations(seqs[i : i + 16])[LAYER]]  # fmt: skip
        top16 = _insert_top16(session, run, residues)
        saes = {s.name: s for s in session.scalars(select(Sae).where(Sae.run_id == run.id))}
        pooled = {
            f"L{LAYER}-neurons": np.stack([np.maximum(r, 0).max(0) for r in residues]),
            top16.name: np.stack([top_k(np.maximum(r, 0)).max(0) for r in residues]),
        }
        # GO, as the GO stage writes it, then loaded by publish's loader
        levels = go_levels(shared / "data/go/go-basic.obo.gz")
        annotations = [set((p.go_bp or "").split(";")) - {""} for p in proteins]
        perm = np.random.default_rng(0).permutation(len(annotations))
        for name, acts in pooled.items():
            cols = enrich_columns(acts, annotations)
            summary = summarize(cols, acts.shape[1], levels)
            control = summarize(enrich_columns(acts[perm], annotations), acts.shape[1], levels)
            summary.update(
                dictionary=name,
                config={"alpha": 0.05},
                population_size={"BP": sum(bool(a) for a in annotations)},
                permutation_control={
                    "n_permutations": 1,
                    "mean_pct_features_with_hit_bh": control["bh"]["pct_features_with_hit"],
                    "mean_pct_features_with_hit_bonferroni": control["bonferroni"][
                        "pct_features_with_hit"
                    ],
                },
            )
            out = workdir / "go" / name
            out.mkdir(parents=True, exist_ok=True)
            (out / "summary.json").write_text(json.dumps(summary))
            np.savez_compressed(out / "hits.npz", **significant_hits(cols))  # type: ignore[arg-type]
        # concepts stage, on real labels, both dictionaries sharing one forward pass
        relu_enc = neurons.encoder(LAYER)
        cfg = ConceptsConfig(
            label_dir=shared / "data/residue_annotations", concepts=CONCEPTS,
            max_chains_per_split=6, batch_residues=2048,
        )  # fmt: skip
        summaries = run_concepts_stage(
            workdir,
            cfg,
            encode_residues={
                f"L{LAYER}-neurons": relu_enc,
                top16.name: lambda s: [top_k(a) for a in relu_enc(s)],
            },
            dictionaries=list(pooled),
        )
        # GO and concept files loaded by the publisher's own loader; the run's config names the
        # concepts' label files, as a trainer run's does (publish reads its labelled examples)
        run.config = {**(run.config or {}), "concepts": {"label_dir": str(cfg.label_dir)}}
        terms = {t.id: (t.name, t.depth) for t in session.scalars(select(GoTerm))}
        loader = DictionaryLoader(session, workdir, run, [p.id for p in proteins])
        for name in pooled:
            sae = saes[name]
            fids = list(
                session.scalars(
                    select(Feature.id).where(Feature.sae_id == sae.id).order_by(Feature.index)
                )
            )
            loader.load_findings(sae, name, fids, terms)
        go = {n: json.loads((workdir / "go" / n / "summary.json").read_text()) for n in pooled}
        info = FindingsStore(
            url, run.id, run.name, {n: s.id for n, s in saes.items()}, CONCEPTS,
            {"go": go, "concepts": summaries},
        )  # fmt: skip
    engine.dispose()
    return info
