"""Real per-residue activations of the mini ESM2 model for tests (neurons as the dictionary)."""

from __future__ import annotations

import numpy as np

from trainer.concepts.neurons import EsmNeurons


class CachingEncoder:
    """Encodes each sequence once (the concepts stage asks twice: max pass and count pass)."""

    def __init__(self, neurons: EsmNeurons, layer: int) -> None:
        self.encode = neurons.encoder(layer)
        self.cache: dict[str, np.ndarray] = {}
        self.calls = 0

    def __call__(self, sequences: list[str]) -> list[np.ndarray]:
        self.calls += 1
        todo = [s for s in dict.fromkeys(sequences) if s not in self.cache]
        for i in range(0, len(todo), 8):
            batch = todo[i : i + 8]
            self.cache.update(zip(batch, self.encode(batch), strict=True))
        return [self.cache[s] for s in sequences]
