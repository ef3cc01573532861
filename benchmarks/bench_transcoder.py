"""Protein-level transcoder quality (held-out FVE, L0, dead fraction) at the demo's settings.

Real pooled activations of the first 1000 human proteins ≤ 700 aa (mini ESM2, layers 3 and 4,
cached under --cache), target pooled(4) − pooled(3), the demo config's transcoder spec.

    PYTHONPATH=. python benchmarks/bench_transcoder.py [--steps 1500] [--cache /tmp/protsae-acts]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from app.settings import Settings
from tests.real_embeddings import real_activations
from trainer.train import SaeSpec, train_dictionary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/protsae-acts"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(2)
    acts = real_activations(Settings().shared_dir, args.cache, n_proteins=1000,
                            residue_proteins=200, max_len=700)  # fmt: skip
    x, y = acts.pooled[3], acts.pooled[4] - acts.pooled[3]
    spec = SaeSpec(name="L3to4-protein-transcoder", kind="transcoder", encoder_kind="topk",
                   level="protein", layer=3, out_layer=4, expansion=4.0, k=32, lr=1e-3,
                   batch_size=128, steps=args.steps)  # fmt: skip
    started = time.perf_counter()
    _, m = train_dictionary(spec, x, y, progress=False, device=args.device)
    keys = ("fve", "train_fve", "l0", "dead_fraction", "dead_latents_at_end", "target_scale")
    print({k: round(float(m[k]), 4) for k in keys}, f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
