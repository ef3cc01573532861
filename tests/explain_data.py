"""Real inputs for the explain tests: human Swiss-Prot proteins, mini-ESM2 activations, GO names.

Activations are real: the mini ESM2 model's layer-3 neurons (mean-pooled, ReLU as the seed's
``embedding_relu``), a small TopK SAE fitted to those pooled vectors for a few hundred steps,
and a residue-level view (neurons per residue, max over the protein).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from scipy import sparse

from app.sae.io import FORMAT, Provenance
from tests.realdata import HUMAN_TSV, go_term_records
from trainer.corpus import Corpus, read_protein_tsv

MODEL = Path("models/esm2_t4_2M_sprot14mini.pt")
LAYER = 3


def load_test_corpus(shared: Path, n: int, max_len: int = 400) -> Corpus:
    """The first ``n`` human proteins of at most ``max_len`` residues with a GO annotation.

    Read with the trainer's own reader, so the explain tests see exactly what a run sees.
    """
    table = read_protein_tsv(shared / HUMAN_TSV)
    keep = [
        i
        for i, seq in enumerate(table.sequences)
        if len(seq) <= max_len and (table.go_bp[i] or table.go_mf[i] or table.go_cc[i])
    ][:n]
    return table.subset(keep)


def go_names(shared: Path, corpus: Corpus) -> dict[str, str]:
    ids = set().union(*corpus.go_bp, *corpus.go_mf, *corpus.go_cc)
    return {k: v["name"] for k, v in go_term_records(shared, ids).items()}


def residue_reps(shared: Path, sequences: list[str]) -> list[np.ndarray]:
    """Layer-``LAYER`` per-residue representations (BOS/EOS excluded), float32 [len, 192] each."""
    import esm

    torch.set_num_threads(1)
    torch.serialization.add_safe_globals([argparse.Namespace])
    model, alphabet = esm.pretrained.load_model_and_alphabet_local(str(shared / MODEL))
    model.eval()
    convert = alphabet.get_batch_converter()
    out: dict[int, np.ndarray] = {}
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # little padding
    with torch.inference_mode():
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            _, _, tokens = convert([(str(i), sequences[i]) for i in idx])
            reps = model(tokens, repr_layers=[LAYER])["representations"][LAYER]
            for j, i in enumerate(idx):
                out[i] = reps[j, 1 : len(sequences[i]) + 1].numpy().copy()
    return [out[i] for i in range(len(sequences))]


def fit_topk_sae(
    x: np.ndarray, n_latents: int, k: int, steps: int = 400, seed: int = 0
) -> np.ndarray:
    """Latents [n, n_latents] of a small TopK SAE trained on ``x`` (tied init, Adam, MSE)."""
    torch.manual_seed(seed)
    xt = torch.from_numpy(x).float()
    mean, std = xt.mean(0), xt.std(0) + 1e-6
    z = (xt - mean) / std
    enc = torch.nn.Linear(z.shape[1], n_latents)
    dec = torch.nn.Linear(n_latents, z.shape[1])
    dec.weight.data = enc.weight.data.T.clone()
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=3e-3)

    def encode(v: torch.Tensor) -> torch.Tensor:
        pre = enc(v)
        top = pre.topk(k, dim=1)
        return torch.zeros_like(pre).scatter(1, top.indices, torch.relu(top.values))

    for _ in range(steps):
        loss = ((dec(encode(z)) - z) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return encode(z).numpy()


def write_activations(workdir: Path, name: str, acts: np.ndarray, level: str = "protein") -> None:
    """``analysis/{name}/protein_activations.npz`` (CSR float32) and a config with the level."""
    out = workdir / "analysis" / name
    out.mkdir(parents=True, exist_ok=True)
    sparse.save_npz(out / "protein_activations.npz", sparse.csr_matrix(acts.astype(np.float32)))
    cfg = workdir / "saes" / name
    cfg.mkdir(parents=True, exist_ok=True)
    # The provenance part of the trainer's own config.json (the stage reads the level there).
    prov = Provenance(base_model="esm2_t4_2M_sprot14mini", checkpoint_sha256="0" * 64, layer=3,
                      out_layer=None, level=level, normalisation="layer_norm")  # fmt: skip
    doc = {"format": FORMAT, "provenance": dataclasses.asdict(prov)}
    (cfg / "config.json").write_text(json.dumps(doc))
