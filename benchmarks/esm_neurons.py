"""Real ESM2 neuron activations: mean-pooled layers, ReLU'd (the paper's neuron baseline).

Used by the GO benchmark and tests as a real feature matrix: 192 neurons × layers 1–4 of the mini
model = 768 features. Sequences are cropped to ``max_len`` residues (the model saw ≤1,022).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from app.esm_window import MAX_RESIDUES

MINI_MODEL = Path("../shared/models/esm2_t4_2M_sprot14mini.pt")


def pooled_neurons(
    sequences: Sequence[str],
    model_path: Path = MINI_MODEL,
    layers: Sequence[int] = (1, 2, 3, 4),
    max_len: int = MAX_RESIDUES,
    max_tokens: int = 8192,
    random_init_seed: int | None = None,
    device: str = "cpu",
) -> sp.csr_matrix:
    """float32 CSR [n_proteins, len(layers) * d]: ReLU(mean over residues of each layer).

    ``random_init_seed``: use a randomly initialised copy of the same architecture instead of
    the trained weights (the null control of the issue).
    """
    import esm

    torch.serialization.add_safe_globals([argparse.Namespace])
    model, alphabet = esm.pretrained.load_model_and_alphabet_local(str(model_path))
    if random_init_seed is not None:
        torch.manual_seed(random_init_seed)
        model = esm.model.esm2.ESM2(
            num_layers=model.num_layers,
            embed_dim=model.embed_dim,
            attention_heads=model.attention_heads,
            alphabet=alphabet,
            token_dropout=model.token_dropout,
        )
    model.eval().to(device)
    convert = alphabet.get_batch_converter()
    crops = [s[:max_len] for s in sequences]
    order = np.argsort([len(s) for s in crops])
    out = np.zeros((len(crops), len(layers) * model.embed_dim), dtype=np.float32)
    start = 0
    with torch.inference_mode():
        while start < len(order):
            stop = start + 1
            while stop < len(order) and (stop - start + 1) * len(crops[order[stop]]) <= max_tokens:
                stop += 1
            idx = order[start:stop]
            _, _, tokens = convert([(str(i), crops[i]) for i in idx])
            reps = model(tokens.to(device), repr_layers=list(layers))["representations"]
            for j, i in enumerate(idx):
                n = len(crops[i])
                out[i] = (
                    torch.cat([reps[layer][j, 1 : n + 1].mean(0) for layer in layers]).cpu().numpy()
                )
            start = stop
    return sp.csr_matrix(np.maximum(out, 0.0))


def cached_pooled_neurons(sequences: Sequence[str], cache: Path, **kw: object) -> sp.csr_matrix:
    """``pooled_neurons`` stored at ``cache`` (recomputed when the protein count differs)."""
    if cache.exists():
        matrix = sp.csr_matrix(sp.load_npz(cache))
        if matrix.shape[0] == len(sequences):
            return matrix
    matrix = pooled_neurons(sequences, **kw)  # type: ignore[arg-type]
    cache.parent.mkdir(parents=True, exist_ok=True)
    sp.save_npz(cache, matrix)
    return matrix
