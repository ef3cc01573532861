"""How faithful is each dictionary's feature map, and what does it cost?

A 2-D map cannot keep every decoder relation; what a user reads off it is neighbourhoods. For
every mapped dictionary of a run this prints the features on the map, the seconds to recompute
it (same seed: the stored map is checked to come back identical), the mean decoder cosine of
each feature to its 10 nearest features on the map against its 10 nearest in decoder space (the
best any map could do) and against all features (a map that ignored the decoders), and the
10-NN recall: the share of a feature's 10 map neighbours that are among its 10 decoder
neighbours (chance: 10 / n).

    PYTHONPATH=. python benchmarks/feature_map_quality.py data/runs/demo-mini-esm2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from app.sae import load_dictionary
from trainer.analyze import AnalyzeConfig
from trainer.feature_map import feature_map

K = 10


def neighbours(points: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Indices of each row's ``k`` nearest other rows (euclidean on the map, cosine for
    decoder directions)."""
    if metric == "cosine":
        unit = points / np.linalg.norm(points, axis=1, keepdims=True)
        dist = -(unit @ unit.T)
    else:
        dist = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    return np.argsort(dist, axis=1, kind="stable")[:, :k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path, help="a run's work directory (holds analysis/, saes/)")
    args = ap.parse_args()
    config = json.loads((args.run_dir / "config.json").read_text())
    cfg = AnalyzeConfig.model_validate(config.get("analyze", {}))
    print(
        f"{'dictionary':<28} {'mapped':>7} {'s':>6}  cos@map10 cos@dec10 cos@all  recall10 chance"
    )
    for path in sorted(args.run_dir.glob("analysis/*/feature_map.npz")):
        name = path.parent.name
        xy = np.load(path)["xy"]
        directions = load_dictionary(args.run_dir / "saes" / name).decoder_directions().numpy()
        live = ~np.isnan(xy[:, 0])
        started = time.perf_counter()
        again = feature_map(directions, live, cfg.map, cfg.seed)
        seconds = time.perf_counter() - started
        same = np.array_equal(again, xy, equal_nan=True)
        d, m = directions[live].astype(np.float64), xy[live].astype(np.float64)
        unit = d / np.linalg.norm(d, axis=1, keepdims=True)
        cos = unit @ unit.T
        on_map, in_decoder = neighbours(m, K, "euclidean"), neighbours(d, K, "cosine")
        recall = np.mean(
            [len(set(a) & set(b)) / K for a, b in zip(on_map, in_decoder, strict=True)]
        )
        every = cos[~np.eye(len(cos), dtype=bool)].mean()
        print(f"{name:<28} {live.sum():>7} {seconds:>6.1f}  "
              f"{np.take_along_axis(cos, on_map, 1).mean():>9.3f} "
              f"{np.take_along_axis(cos, in_decoder, 1).mean():>9.3f} {every:>7.3f}  "
              f"{recall:>8.3f} {K / live.sum():>6.3f}{'' if same else '  (differs from stored)'}")  # fmt: skip


if __name__ == "__main__":
    main()
