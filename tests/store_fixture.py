"""A small but real published run, for the explorer and API tests.

Real human Swiss-Prot proteins (some with real structures from ../shared, mapped to the sequence
by alignment), the real mini ESM2 model, and its layer-3 neurons as the dictionary (the neuron
baseline, kind "neurons": ReLU of each neuron, residue level). Top examples carry the real
per-residue activations. Built once per test session into an SQLite file.

It is quick to build and independent of the trainer, so the explorer's tests do not break with
it; the trainer's own end-to-end run is covered by ``tests/test_pipeline.py`` (the same pages
then read a store the pipeline wrote). Tests should rely only on what ``build_store``
documents: one published run with >=1 dictionary, features with top examples (bins "top",
"q1".."q5", "structure") and per-residue values, proteins with structures whose
``sequence_positions`` come from an alignment, GO terms for the proteins' annotations.
"""

from __future__ import annotations

import argparse
import csv
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from Bio import Align
from Bio.PDB import PDBParser
from Bio.SeqUtils import seq1
from sqlalchemy.orm import Session

from app.store import migrate
from app.store.bulk import bulk_insert, reserve_ids
from app.store.codec import encode_values
from app.store.engine import make_engine
from app.store.publish import publish_run
from app.store.schema import (
    Feature,
    GoTerm,
    Protein,
    ProteinFeature,
    Run,
    Sae,
    Structure,
    TopExample,
)
from tests.realdata import go_term_records

LAYER = 3
N_PROTEINS = 120
N_WITH_STRUCTURE = 12


@dataclass
class FixtureInfo:
    url: str
    run_id: int
    sae_id: int
    n_features: int
    accessions: list[str]
    structure_accessions: list[str]


def _proteins(shared: Path) -> tuple[list[dict[str, str]], dict[str, dict[str, str]]]:
    with gzip.open(shared / "data/proteins/human_sprot2014.tsv.gz", "rt", newline="") as handle:
        human = {r["accession"]: r for r in csv.DictReader(handle, delimiter="\t")}
    chains: dict[str, dict[str, str]] = {}
    with (shared / "data/structures/structures.tsv").open(newline="") as handle:
        for rec in csv.DictReader(handle, delimiter="\t"):
            acc = rec["sprot2014_accession"]
            if acc in human and acc not in chains and int(human[acc]["length"]) <= 600:
                chains[acc] = rec
    with_structure = sorted(chains)[:N_WITH_STRUCTURE]
    others = [a for a in sorted(human) if a not in chains and 50 <= int(human[a]["length"]) <= 500]
    rng = np.random.default_rng(0)
    chosen = with_structure + list(rng.choice(others, N_PROTEINS - len(with_structure), False))
    return [human[a] for a in chosen], {a: chains[a] for a in with_structure}


def _map_chain(path: Path, chain_id: str, sequence: str) -> tuple[str, list[str], list[int]]:
    with gzip.open(path, "rt") as handle:
        structure = PDBParser(QUIET=True).get_structure("s", handle)
    chain = next(iter(structure))[chain_id]
    residues = [r for r in chain if r.id[0] == " " or r.get_resname() == "MSE"]
    chain_seq = "".join(seq1(r.get_resname(), custom_map={"MSE": "M"}) for r in residues)
    aligner = Align.PairwiseAligner(mode="global", open_gap_score=-10, extend_gap_score=-0.5)
    aligner.end_gap_score = 0
    alignment = aligner.align(chain_seq, sequence)[0]
    positions = [-1] * len(chain_seq)
    for (s0, s1), (t0, _t1) in zip(*alignment.aligned, strict=True):
        for offset in range(s1 - s0):
            if chain_seq[s0 + offset] == sequence[t0 + offset]:
                positions[s0 + offset] = int(t0 + offset)
    ids = [f"{r.id[1]}{r.id[2].strip()}" for r in residues]
    return chain_seq, ids, positions


def _embed(shared: Path, sequences: list[str]) -> list[np.ndarray]:
    import esm

    torch.serialization.add_safe_globals([argparse.Namespace])
    model, alphabet = esm.pretrained.load_model_and_alphabet_local(
        str(shared / "models/esm2_t4_2M_sprot14mini.pt")
    )
    model.eval()
    convert = alphabet.get_batch_converter()
    out = []
    with torch.inference_mode():
        for i in range(0, len(sequences), 16):
            batch = sequences[i : i + 16]
            _, _, tokens = convert([(str(j), s) for j, s in enumerate(batch)])
            reps = model(tokens, repr_layers=[LAYER])["representations"][LAYER]
            out.extend(reps[j, 1 : len(s) + 1].numpy().copy() for j, s in enumerate(batch))
    return out


def build_store(shared: Path, db_path: Path) -> FixtureInfo:
    """Build the fixture run into the SQLite file ``db_path`` (see module docstring)."""
    url = f"sqlite:///{db_path}"
    migrate.upgrade(url)
    engine = make_engine(url)
    rows, chains = _proteins(shared)
    sequences = [r["sequence"] for r in rows]
    residue_acts = [np.maximum(x, 0.0) for x in _embed(shared, sequences)]  # ReLU'd neurons
    protein_max = np.stack([a.max(axis=0) for a in residue_acts])  # [n_proteins, 192]
    n_features = protein_max.shape[1]
    go_ids = {
        g for r in rows for col in ("go_bp", "go_mf", "go_cc") for g in r[col].split(";") if g
    }
    terms = go_term_records(shared, go_ids)
    info: dict[str, int] = {}

    def load(session: Session, run: Run) -> None:
        pids = reserve_ids(session, Protein, len(rows))
        bulk_insert(session, Protein, [
            {"id": pid, "accession": r["accession"], "name": r["protein_name"] or None,
             "gene": r["gene_symbol"] or None, "organism": r["organism"] or None,
             "taxon_id": 9606, "length": int(r["length"]), "sequence": r["sequence"],
             "go_bp": r["go_bp"] or None, "go_mf": r["go_mf"] or None, "go_cc": r["go_cc"] or None,
             "pfam": None, "ec": None, "source": "human_sprot2014"}
            for pid, r in zip(pids, rows, strict=True)
        ])  # fmt: skip
        ns = {"biological_process": "BP", "molecular_function": "MF", "cellular_component": "CC"}
        bulk_insert(session, GoTerm, [
            {"id": t, "name": rec["name"], "namespace": ns.get(rec.get("namespace", ""), "BP"),
             "depth": 0, "level": 0, "definition": rec.get("def"), "parents": [],
             "is_obsolete": False}
            for t, rec in terms.items()
        ])  # fmt: skip
        for i, r in enumerate(rows):
            rec = chains.get(r["accession"])
            if rec is None:
                continue
            path = shared / "data/structures" / rec["file"]
            chain_seq, ids, positions = _map_chain(path, rec["chain"], r["sequence"])
            session.add(Structure(
                protein_id=pids[i], file_path=str(path), format="pdb", chain=rec["chain"],
                source=rec["source"], structure_type=rec["structure_type"],
                chain_sequence=chain_seq, residue_ids=ids, sequence_positions=positions,
                identity=float(rec["sprot2014_identity"] or 0) / 100.0,
                coverage=sum(p >= 0 for p in positions) / max(len(positions), 1),
            ))  # fmt: skip
        sae = Sae(run_id=run.id, name=f"L{LAYER}-neurons", kind="neurons", level="residue",
                  layer=LAYER, d_in=n_features, n_latents=n_features,
                  metrics={}, config={"note": "ReLU of raw ESM2 neurons"})  # fmt: skip
        session.add(sae)
        session.flush()
        info["sae_id"] = sae.id
        fids = reserve_ids(session, Feature, n_features)
        feature_rows = []
        for f in range(n_features):
            col = protein_max[:, f]
            active = col[col > 0]
            counts, edges = np.histogram(active, bins=12, range=(0, float(col.max()) or 1.0))
            feature_rows.append({
                "id": fids[f], "sae_id": sae.id, "index": f,
                "density": float((col > 0).mean()), "n_active": int((col > 0).sum()),
                "max_activation": float(col.max()),
                "mean_activation": float(active.mean()) if active.size else 0.0,
                "hist_edges": edges.round(4).tolist(), "hist_counts": counts.tolist(),
                "is_dead": bool(active.size == 0), "pattern_class": None,
                "auto_label": None, "auto_label_source": None, "explanation_score": None,
                "n_go_hits": 0,
            })  # fmt: skip
        bulk_insert(session, Feature, feature_rows)
        has_structure = np.array([r["accession"] in chains for r in rows])
        examples = []
        for f in range(n_features):
            order = np.argsort(-protein_max[:, f], kind="stable")
            groups = [("top", order[:8])]
            top_max = protein_max[order[0], f] or 1.0
            norm = protein_max[:, f] / top_max
            for b in range(5):
                in_bin = [p for p in order[8:] if b / 5 < norm[p] <= (b + 1) / 5]
                groups.append((f"q{b + 1}", np.array(in_bin[:3], dtype=np.int64)))
            groups.append(("structure", order[has_structure[order]][:3]))
            for bin_name, proteins in groups:
                for rank, p in enumerate(proteins):
                    values = residue_acts[p][:, f]
                    examples.append({
                        "feature_id": fids[f], "protein_id": pids[p], "bin": bin_name,
                        "rank": rank, "activation": float(protein_max[p, f]),
                        "max_position": int(values.argmax()),
                        "residue_values": encode_values(values),
                    })  # fmt: skip
        bulk_insert(session, TopExample, examples)
        pf_rows = []
        for p in range(len(rows)):
            for rank, f in enumerate(np.argsort(-protein_max[p], kind="stable")[:10]):
                pf_rows.append({
                    "protein_id": pids[p], "sae_id": sae.id, "feature_id": fids[int(f)],
                    "rank": rank, "activation": float(protein_max[p, f]),
                    "residue_values": encode_values(residue_acts[p][:, f]),
                })  # fmt: skip
        bulk_insert(session, ProteinFeature, pf_rows)

    run = Run(name="fixture-neurons-L3", base_model="esm2_t4_2M_sprot14mini",
              checkpoint_sha256="d4f0b41a6dbb4887b73832bcf982b042f4cf61a69485ba982f79156b357a2986",
              layer=LAYER, corpus=f"human_sprot2014 ({len(rows)} proteins)",
              n_proteins=len(rows), config={"fixture": True})  # fmt: skip
    run_id = publish_run(engine, run, load)
    engine.dispose()
    return FixtureInfo(
        url=url, run_id=run_id, sae_id=info["sae_id"], n_features=n_features,
        accessions=[r["accession"] for r in rows], structure_accessions=sorted(chains),
    )  # fmt: skip
