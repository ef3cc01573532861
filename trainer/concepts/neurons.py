"""ESM2 neurons as a 'dictionary': ReLU'd per-residue activations of one layer.

This is the neuron baseline of the concept stage (InterPLM, and the seed paper's
``--embedding_relu 1``). Every layer's encoder shares one forward pass per batch: the last
batch's representations are memoised, and the concept stage asks each dictionary about the
same batch in turn.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from app.esm import load_esm

Encoder = Callable[[list[str]], list[np.ndarray]]


class EsmNeurons:
    """A fair-esm model whose layers' ReLU'd neurons are read per residue (BOS/EOS dropped)."""

    def __init__(self, model_path: Path, layers: list[int], device: str = "cpu") -> None:
        loaded = load_esm(model_path, device)  # the project's one checked, safe loader
        self.model = loaded.model
        self.converter = loaded.batch_converter
        self.layers = list(layers)
        self.device = device
        self._key: tuple[str, ...] | None = None
        self._reps: dict[int, list[np.ndarray]] = {}

    def representations(self, sequences: list[str]) -> dict[int, list[np.ndarray]]:
        """Per layer, one float32 [len, d] array per sequence (memoised for the last batch)."""
        key = tuple(sequences)
        if key != self._key:
            _, _, tokens = self.converter([(str(i), s) for i, s in enumerate(sequences)])
            with torch.inference_mode():
                out = self.model(tokens.to(self.device), repr_layers=self.layers)
            self._reps = {
                layer: [
                    out["representations"][layer][i, 1 : len(s) + 1].float().cpu().numpy()
                    for i, s in enumerate(sequences)
                ]
                for layer in self.layers
            }
            self._key = key
        return self._reps

    def encoder(self, layer: int) -> Encoder:
        """Sequences → ReLU'd neurons of ``layer``, float32 [len, d] per sequence."""
        if layer not in self.layers:
            raise ValueError(f"layer {layer} not among the loaded layers {self.layers}")

        def encode(sequences: list[str]) -> list[np.ndarray]:
            return [np.maximum(r, 0.0) for r in self.representations(sequences)[layer]]

        return encode
