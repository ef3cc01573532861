"""Layer representations of the labelled chains, computed once and shared.

The concept stage asks every dictionary about the same batch of chains, twice (a pass for each
feature's max, a pass for the counts). Without sharing, each dictionary of a layer would rerun
the language model on every batch in both passes; with it, the model runs once per batch and
per model. Representations are kept as float16 (as the embed stage's shards are, so features
see the same inputs everywhere) up to a byte budget; batches beyond it are recomputed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from app.esm import LoadedModel, embed_concatenated

Encoder = Callable[[list[str]], list[np.ndarray]]
Transform = Callable[[torch.Tensor], torch.Tensor]
_Reps = tuple[np.ndarray, dict[int, np.ndarray]]  # offsets [n + 1], {layer: float16 [N, d]}


class SharedRepresentations:
    """Per (model, batch of sequences): ``{layer: float16 [sum(len), d]}`` and the offsets."""

    def __init__(self, max_bytes: int, max_tokens_per_batch: int = 8192) -> None:
        self.max_bytes = max_bytes
        self.max_tokens_per_batch = max_tokens_per_batch
        self._layers: dict[int, set[int]] = {}
        self._kept: dict[tuple[int, tuple[str, ...]], _Reps] = {}
        self._last: tuple[tuple[int, tuple[str, ...]], _Reps] | None = None
        self.kept_bytes = 0
        self.forward_passes = 0

    def register(self, model: LoadedModel, layer: int) -> None:
        """Declare that some dictionary reads ``layer`` of ``model`` (before the first batch)."""
        self._layers.setdefault(id(model), set()).add(layer)

    def get(
        self, model: LoadedModel, layer: int, sequences: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(offsets [n + 1], float16 [sum(len), d]) of ``layer`` for these sequences."""
        if layer not in self._layers.get(id(model), set()):
            raise ValueError(f"layer {layer} of model {model.name!r} was not registered")
        key = (id(model), tuple(sequences))
        hit = self._kept.get(key)
        if hit is None and self._last is not None and self._last[0] == key:
            hit = self._last[1]
        if hit is None:
            hit = self._compute(model, sequences)
            size = sum(a.nbytes for a in hit[1].values())
            if self.kept_bytes + size <= self.max_bytes:
                self._kept[key] = hit
                self.kept_bytes += size
            self._last = (key, hit)
        offsets, reps = hit
        return offsets, reps[layer]

    def _compute(self, model: LoadedModel, sequences: Sequence[str]) -> _Reps:
        layers = sorted(self._layers[id(model)])
        offsets, stacked = embed_concatenated(
            model, list(sequences), layers,
            max_tokens_per_batch=self.max_tokens_per_batch, dtype=np.float16,
        )  # fmt: skip
        self.forward_passes += 1
        return offsets, stacked

    def encoder(self, model: LoadedModel, layer: int, transform: Transform) -> Encoder:
        """Sequences → ``transform``(layer representations), one float32 array per sequence."""
        self.register(model, layer)

        def encode(sequences: list[str]) -> list[np.ndarray]:
            offsets, block = self.get(model, layer, sequences)
            with torch.inference_mode():
                acts = transform(torch.from_numpy(block).float()).numpy()
            return [acts[offsets[i] : offsets[i + 1]] for i in range(len(sequences))]

        return encode
