"""Saving and loading dictionaries with their provenance, so a mismatched one is refused.

A dictionary folder holds ``sae.safetensors`` (the weights) and ``config.json`` (architecture,
provenance, training parameters and the weights' sha256), written weights first, config last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from app.atomic_write import atomic_path, write_atomic
from app.sae.models import (
    BatchTopKSAE,
    ReluL1SAE,
    SparseDictionary,
    TopKSAE,
    Transcoder,
)
from app.sae.neurons import NeuronBasis

FORMAT = "protsae-dictionary/1"
WEIGHTS = "sae.safetensors"
CONFIG = "config.json"
LEVELS = ("protein", "residue")

Dictionary = SparseDictionary | NeuronBasis


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What a dictionary was trained on. ``level``: protein (pooled) or residue."""

    base_model: str
    checkpoint_sha256: str
    layer: int
    out_layer: int | None
    level: str
    normalisation: str
    training_data_hash: str | None = None

    # The fields that must agree before a dictionary may encode a model's activations.
    IDENTITY = ("checkpoint_sha256", "layer", "out_layer", "level", "normalisation")

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {self.level!r}")

    def mismatches(self, other: Provenance) -> list[str]:
        """Human-readable differences on the identity fields (empty when compatible)."""
        return [
            f"{name}: saved {getattr(self, name)!r}, expected {getattr(other, name)!r}"
            for name in self.IDENTITY
            if getattr(self, name) != getattr(other, name)
        ]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def build_dictionary(cfg: dict[str, Any]) -> Dictionary:
    """A fresh module from the ``dictionary`` block of a config.json."""
    kind = cfg["kind"]
    common = {"normalisation": cfg.get("normalisation", "layer_norm"), "aux_k": cfg.get("aux_k")}
    if kind == "neurons":
        return NeuronBasis(cfg["d_in"])
    if kind == "topk":
        return TopKSAE(cfg["d_in"], cfg["n_latents"], cfg["k"], **common)
    if kind == "batchtopk":
        return BatchTopKSAE(cfg["d_in"], cfg["n_latents"], cfg["k"], **common)
    if kind == "relu_l1":
        return ReluL1SAE(cfg["d_in"], cfg["n_latents"], cfg["l1_coefficient"], **common)
    if kind == "transcoder":
        return Transcoder(
            cfg["d_in"],
            cfg["n_latents"],
            cfg["d_out"],
            encoder_kind=cfg["encoder_kind"],
            k=cfg.get("k"),
            l1_coefficient=cfg.get("l1_coefficient") or 0.0,
            **common,
        )
    raise ValueError(f"unknown dictionary kind {kind!r}")


def save_dictionary(
    module: nn.Module,
    directory: str | Path,
    provenance: Provenance,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write ``sae.safetensors`` then ``config.json`` into ``directory``; returns the directory."""
    if not isinstance(module, SparseDictionary | NeuronBasis):
        raise TypeError(f"not a dictionary: {type(module).__name__}")
    if provenance.normalisation != module.normalisation:
        raise ValueError(
            f"provenance says normalisation {provenance.normalisation!r}, "
            f"the module uses {module.normalisation!r}"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in module.state_dict().items()}
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    document = {
        "format": FORMAT,
        "dictionary": module.config(),
        "provenance": dataclasses.asdict(provenance),
        "training": config or {},
        "weights_sha256": sha256_file(directory / WEIGHTS),
    }
    write_atomic(directory / CONFIG, json.dumps(document, indent=2, sort_keys=True))
    return directory


def read_config(directory: str | Path) -> dict[str, Any]:
    """The parsed config.json, with a clear error for a missing or foreign file."""
    path = Path(directory) / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{path}: no dictionary config here")
    try:
        document: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    if document.get("format") != FORMAT:
        raise ValueError(f"{path}: format {document.get('format')!r}, expected {FORMAT!r}")
    return document


def read_provenance(directory: str | Path) -> Provenance:
    """The provenance recorded with a saved dictionary."""
    return Provenance(**read_config(directory)["provenance"])


def load_dictionary(
    directory: str | Path, expect: Provenance | None = None, device: str = "cpu"
) -> Dictionary:
    """Load a saved dictionary in eval mode; refuse it if its provenance differs from ``expect``
    (model checkpoint sha, layer, out layer, level, normalisation) or its weights were altered."""
    directory = Path(directory)
    document = read_config(directory)
    saved = Provenance(**document["provenance"])
    if expect is not None and (diffs := saved.mismatches(expect)):
        raise ValueError(
            f"{directory}: dictionary does not match the activations it would encode: "
            + "; ".join(diffs)
        )
    weights = directory / WEIGHTS
    if (actual := sha256_file(weights)) != document["weights_sha256"]:
        raise ValueError(
            f"{weights}: sha256 {actual} differs from {document['weights_sha256']} in {CONFIG}"
        )
    module = build_dictionary(document["dictionary"])
    state = load_file(str(weights), device=device)
    module.load_state_dict(state, strict=True)
    return module.to(torch.device(device)).eval()
