"""Real ESM2 activations for dictionary tests: the mini model on a few hundred human proteins.

Pooled vectors are the mean over residues (BOS/EOS excluded), as in the pipeline's embed stage.
Computed once and cached as ``.npz`` (keyed by the checkpoint's sha256 and the slice).
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tests.realdata import human_proteins

MODEL = Path("models/esm2_t4_2M_sprot14mini.pt")


@dataclass
class RealActivations:
    accessions: list[str]
    pooled: dict[int, np.ndarray]  # layer -> float32 [n_proteins, d]
    residues: dict[int, np.ndarray]  # layer -> float32 [n_residues, d] of the first proteins
    offsets: np.ndarray  # int64 [n_residue_proteins + 1] into residues
    model_sha256: str


def _model_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def real_activations(
    shared: Path,
    cache_dir: Path,
    n_proteins: int = 300,
    layers: tuple[int, ...] = (3, 4),
    residue_proteins: int = 60,
    max_len: int = 400,
) -> RealActivations:
    """The first ``n_proteins`` human proteins of length ≤ ``max_len`` through the mini model."""
    model_path = shared / MODEL
    sha = _model_sha(model_path)
    key = f"{sha[:12]}_{n_proteins}_{'-'.join(map(str, layers))}_{residue_proteins}_{max_len}"
    cache = cache_dir / f"esm_acts_{key}.npz"
    if not cache.exists():
        _compute(shared, model_path, cache, n_proteins, layers, residue_proteins, max_len)
    data = np.load(cache)
    return RealActivations(
        accessions=list(data["accessions"]),
        pooled={layer: data[f"pooled_{layer}"] for layer in layers},
        residues={layer: data[f"residues_{layer}"] for layer in layers},
        offsets=data["offsets"],
        model_sha256=sha,
    )


def _compute(
    shared: Path,
    model_path: Path,
    cache: Path,
    n_proteins: int,
    layers: tuple[int, ...],
    residue_proteins: int,
    max_len: int,
) -> None:
    import esm

    torch.serialization.add_safe_globals([argparse.Namespace])
    model, alphabet = esm.pretrained.load_model_and_alphabet_local(str(model_path))
    model.eval()
    rows = [r for r in human_proteins(shared, 3 * n_proteins) if len(r["sequence"]) <= max_len]
    rows = rows[:n_proteins]
    if len(rows) < n_proteins:
        raise ValueError(f"only {len(rows)} proteins ≤ {max_len} aa in the slice")
    convert = alphabet.get_batch_converter()
    pooled: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    residues: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    offsets = [0]
    with torch.inference_mode():
        for start in range(0, len(rows), 16):
            batch = rows[start : start + 16]
            _, _, tokens = convert([(r["accession"], r["sequence"]) for r in batch])
            reps = model(tokens, repr_layers=list(layers))["representations"]
            for j, row in enumerate(batch):
                length = len(row["sequence"])
                for layer in layers:
                    per_residue = reps[layer][j, 1 : length + 1].float().numpy()
                    pooled[layer].append(per_residue.mean(axis=0))
                    if start + j < residue_proteins:
                        residues[layer].append(per_residue)
                if start + j < residue_proteins:
                    offsets.append(offsets[-1] + length)
    cache.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"pooled_{layer}": np.stack(pooled[layer]).astype(np.float32) for layer in layers}
    arrays |= {f"residues_{layer}": np.concatenate(residues[layer]) for layer in layers}
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        accessions=np.array([r["accession"] for r in rows]),
        offsets=np.array(offsets, dtype=np.int64),
        **arrays,
    )
    tmp.replace(cache)


def cached_real_activations(config: object, shared: Path) -> RealActivations:
    """``real_activations`` cached in pytest's cache directory (``config`` is pytest's config)."""
    cache_dir = Path(config.cache.mkdir("esm_activations"))  # type: ignore[attr-defined]
    torch.set_num_threads(1)
    return real_activations(shared, cache_dir)
