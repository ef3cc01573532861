"""Disk per residue with and without ``embed.residue_proteins``, and whether analysis differs.

Embeds the same real human proteins twice (every protein's residues stored; a seeded sample's
only), prints the embeddings directory's bytes per residue for each, then analyzes one
residue-level TopK dictionary (seeded random weights: what is compared is the bookkeeping and
the numbers, not feature quality) over both stores, the sampled one recomputing the other
proteins' residues with the model (``trainer.residue_replay``), and compares every array the
analysis writes (per-feature stats, examples and their tracks, per-protein activations and top
features, the amino-acid profile).

    PYTHONPATH=. python benchmarks/bench_residue_sample.py --n-proteins 300 --sample 30
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from app.esm import load_esm
from app.sae import TopKSAE
from app.settings import get_settings
from tests.realdata import HUMAN_TSV
from trainer.analyze import AnalyzeConfig, Spec, run_analyze
from trainer.corpus import read_protein_tsv
from trainer.embed import EmbedConfig, run_embed
from trainer.embedding_store import EmbeddingStore
from trainer.feature_map import MapConfig
from trainer.residue_replay import ReplayedResidues


def directory_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def analysis_arrays(out: Path) -> dict[str, np.ndarray]:
    """Every array an analysis wrote (summary.json but for its seconds, as one string)."""
    arrays: dict[str, np.ndarray] = {}
    for path in sorted(out.glob("*.npz")):
        if path.name == "protein_activations.npz":
            acts = sp.load_npz(path).tocsr()
            arrays |= {"acts.indptr": acts.indptr, "acts.indices": acts.indices,
                       "acts.data": acts.data}  # fmt: skip
            continue
        with np.load(path) as data:
            arrays |= {f"{path.stem}.{key}": data[key] for key in data.files}
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("seconds")
    arrays["summary"] = np.array(json.dumps(summary, sort_keys=True))
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-proteins", type=int, default=300)
    parser.add_argument("--sample", type=int, default=30, help="embed.residue_proteins")
    parser.add_argument("--max-length", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shared = get_settings().shared_dir
    table = read_protein_tsv(shared / HUMAN_TSV).sequences
    seqs = [s for s in table if 30 <= len(s) <= args.max_length]
    seqs = random.Random(args.seed).sample(seqs, args.n_proteins)
    model_path = shared / "models" / "esm2_t4_2M_sprot14mini.pt"
    loaded = load_esm(model_path, device="cpu")
    # The seed recipe's shape on the mini model: three layers embedded, one stored per residue.
    cfg = EmbedConfig(model=str(model_path), layers=[2, 3, 4], residue_layers=[4],
                      shard_max_residues=20_000, device="cpu")  # fmt: skip
    n_residues = sum(len(s) for s in seqs)
    print(f"{len(seqs)} human proteins, {n_residues:,} residues, mini ESM2 (d {loaded.embed_dim})")
    torch.manual_seed(0)
    sae = TopKSAE(loaded.embed_dim, 4 * loaded.embed_dim, k=16).eval()
    acfg = AnalyzeConfig(device="cpu", map=MapConfig(enabled=False))
    outs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, sample in (("full", None), ("sampled", args.sample)):
            workdir = Path(tmp) / name
            started = time.perf_counter()
            run_embed(workdir, seqs, cfg.model_copy(update={"residue_proteins": sample}),
                      model_override=loaded, residue_seed=args.seed)  # fmt: skip
            embed_s = time.perf_counter() - started
            store = EmbeddingStore(workdir / "embeddings")
            size = directory_bytes(store.directory)
            print(f"{name:8s} residues stored {store.n_stored_residues:>9,} of {n_residues:,}; "
                  f"embeddings dir {size:>12,} B = {size / n_residues:7.1f} B/residue; "
                  f"embed {embed_s:.1f} s")  # fmt: skip
            source = ReplayedResidues(store, loaded, seqs) if sample else None
            started = time.perf_counter()
            outs[name] = run_analyze(workdir, sae, Spec("L4-residue", "residue", 4), store, {},
                                     acfg, source, sequences=seqs)  # fmt: skip
            print(f"{name:8s} analyze {time.perf_counter() - started:.1f} s")
        ref, got = analysis_arrays(outs["full"]), analysis_arrays(outs["sampled"])
        differ = [
            k for k in ref if not np.array_equal(ref[k], got[k], equal_nan=ref[k].dtype.kind == "f")
        ]
        print(f"analysis arrays compared: {len(ref)}; differing: {differ or 'none (bit for bit)'}")


if __name__ == "__main__":
    main()
