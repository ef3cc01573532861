"""Time, peak memory and disk per stage as the corpus grows: the seed recipe on the 35M architecture.

Runs ingest, embed, train and analyze of ``configs/seed-esm2-35m.toml`` (its dictionaries at full
width: 20,000 latents on 480 dims, k 64 / 16; the layer-8 neuron baseline) on N human Swiss-Prot
proteins for each N, with a random-initialised checkpoint of ``esm2_t12_35M_UR50D`` in fair-esm's
on-disk format (``tests/esm_checkpoints.py``) placed in a private torch hub cache. A random model
costs what the real one does: the same shapes, the same arithmetic. Training runs ``--steps``
steps per dictionary (the recipe's 180,000 are a GPU's work, docs/scale.md), the same at every N,
so the train stage's growth is what the corpus adds (pooled vectors; the residue sample is
steps x batch / 2, fixed by the config).

Each stage runs as its own process (``protsae trainer <stage>``) under ``/usr/bin/time``, so its
peak RSS is its own. Per stage it prints seconds per million residues, CPU seconds (the machine
may be shared), peak RSS and the bytes per residue the stage left on disk.

    PYTHONPATH=. python benchmarks/bench_scale.py [--sizes 1000 4000 16000] [--max-length 300]
        [--tsv TSV ...] [--steps 20] [--stages ingest embed ...] [--shard-max-residues 200000] [--threads 2] [--root /tmp/protsae-bench-scale]
        [--json out.json]

``--max-length`` keeps proteins of at most that many residues (ingest's filter; 0 = any length):
on 2 CPU cores the 35M model embeds ~1-3k residues/s, so full-length proteins at 16k take hours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from app.settings import PROJECT_ROOT
from tests.esm_checkpoints import write_random_checkpoint
from trainer.layout import RunLayout

MODEL = "esm2_t12_35M_UR50D"
SHARED = Path(os.environ.get("PROTSAE_SHARED_DIR", PROJECT_ROOT.parent / "shared"))
HUMAN = SHARED / "data" / "proteins" / "human_sprot2014.tsv.gz"
STAGES = ("ingest", "embed", "train", "analyze")
# What each stage leaves in the work dir (ingest: the corpus; train: weights; analyze: results).
OUTPUTS = {"ingest": ["corpus"], "embed": ["embeddings"], "train": ["saes"],
           "analyze": ["analysis"]}  # fmt: skip


def _config(n: int, args: argparse.Namespace) -> str:
    """The seed recipe on ``n`` proteins of ``args.tsv``, its dictionaries with ``args.steps``."""
    recipe = PROJECT_ROOT / "configs" / "seed-esm2-35m.toml"
    saes = [
        "[[saes]]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in {**sae, "steps": args.steps}.items())
        for sae in tomllib.loads(recipe.read_text())["saes"]
    ]
    return (
        f'extends = "{recipe}"\n\n[run]\nname = "scale-{n}"\ntorch_threads = {args.threads}\n\n'
        f"[ingest]\nprotein_tsvs = {json.dumps([str(t) for t in args.tsv])}\n"
        f"max_proteins = {n}\nmax_length = {args.max_length or 100_000}\n"
        'structures_table = ""\n\n'  # chain mapping: ingest's own cost, not the model's
        f"[embed]\nshard_max_residues = {args.shard_max_residues}\n\n"
        # Loss recovered: a fixed cost per dictionary (held-out proteins, not the corpus).
        f"[loss]\nn_proteins = 16\nmax_length = 256\n\n" + "\n".join(saes)
    )


def _du(paths: list[Path]) -> int:
    return sum(f.stat().st_size for p in paths if p.exists() for f in p.rglob("*") if f.is_file())


def _run_stage(
    stage: str, config: Path, env: dict[str, str], log: Path
) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, peak RSS bytes) of one stage in its own process. CPU seconds
    (user + system, all threads) are what the stage costs on a machine shared with others."""
    timing = log.with_suffix(".time")
    cmd = ["/usr/bin/time", "-f", "%M %U %S", "-o", str(timing), sys.executable, "-m", "trainer.cli",
           "trainer", stage, str(config)]  # fmt: skip
    started = time.perf_counter()
    with log.open("w") as out:
        result = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{stage} failed (exit {result.returncode}); see {log}")
    rss_kib, user, system = timing.read_text().split()[-3:]
    return seconds, float(user) + float(system), int(rss_kib) * 1024


def run_size(n: int, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    data = args.root / f"data-{n}"
    config = args.root / f"scale-{n}.toml"
    config.write_text(_config(n, args))
    env = {**env, "PROTSAE_DATA_DIR": str(data)}
    layout = RunLayout.of_run(data, f"scale-{n}")
    workdir = layout.workdir
    out: dict[str, Any] = {"n_proteins": n, "stages": {}}
    for stage in args.stages:
        seconds, cpu, rss = _run_stage(stage, config, env, args.root / f"{n}-{stage}.log")
        out["stages"][stage] = {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_bytes": rss,
                                "disk_bytes": _du([workdir / p for p in OUTPUTS[stage]])}  # fmt: skip
        print(f"  {n:>6} {stage:<8} {seconds:8.1f} s  {cpu:8.1f} CPU s  {rss / 2**20:8.0f} MiB",
              flush=True)  # fmt: skip
    manifest = json.loads(layout.embeddings().manifest.read_text())
    out["n_proteins"] = manifest["n_proteins"]
    out["n_residues"] = manifest["n_residues"]
    out["residue_layers"] = manifest["residue_layers"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--max-length", type=int, default=300)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--tsv",
        type=Path,
        nargs="+",
        default=[HUMAN],
        help="protein tables (the shared Swiss-Prot TSV layout)",
    )
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument(
        "--shard-max-residues",
        type=int,
        default=200_000,
        help="the embed stage's shard size (the recipe's default: 200,000)",
    )
    parser.add_argument("--root", type=Path, default=Path("/tmp/protsae-bench-scale"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    torch_home = args.root / "torch"
    if not (torch_home / "hub" / "checkpoints" / f"{MODEL}.pt").exists():
        write_random_checkpoint(MODEL, torch_home / "hub" / "checkpoints")
    env = {**os.environ, "TORCH_HOME": str(torch_home), "PYTHONPATH": str(PROJECT_ROOT),
           "PROTSAE_SHARED_DIR": str(SHARED),
           "TQDM_DISABLE": "1"}  # fmt: skip
    results = []
    for n in args.sizes:
        results.append(run_size(n, args, env))
    print(f"\n{MODEL}, seed recipe (20,000 latents, k 64/16), {args.steps} steps per dictionary, "
          f"{args.threads} threads, proteins <= {args.max_length or 'any'} aa from "
          f"{', '.join(t.name for t in args.tsv)}")  # fmt: skip
    print(f"{'proteins':>8} {'residues':>10} {'stage':<8} {'s/M res':>9} {'CPU s/M res':>12} "
          f"{'peak RSS MiB':>13} {'disk B/res':>11}")  # fmt: skip
    for r in results:
        for stage, m in r["stages"].items():
            millions = r["n_residues"] / 1e6
            print(f"{r['n_proteins']:>8} {r['n_residues']:>10,} {stage:<8} "
                  f"{m['seconds'] / millions:>9.0f} {m['cpu_seconds'] / millions:>12.0f} "
                  f"{m['peak_rss_bytes'] / 2**20:>13.0f} "
                  f"{m['disk_bytes'] / r['n_residues']:>11.1f}")  # fmt: skip
    if len(results) > 1:
        a, b = results[-2], results[-1]
        extra = b["n_residues"] - a["n_residues"]
        print(f"\npeak RSS {b['n_proteins']} vs {a['n_proteins']} proteins "
              f"({b['n_residues'] / a['n_residues']:.2f}x the residues): ratio, and the growth "
              "per extra residue (what a larger corpus adds)")  # fmt: skip
        for stage in args.stages:
            rss_a, rss_b = (r["stages"][stage]["peak_rss_bytes"] for r in (a, b))
            print(f"  {stage:<8} {rss_b / rss_a:.2f}x  {(rss_b - rss_a) / extra:+8.1f} B/residue")
    if args.json:
        args.json.write_text(json.dumps({"model": MODEL, "steps": args.steps,
                                         "threads": args.threads, "max_length": args.max_length,
                                         "results": results}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
