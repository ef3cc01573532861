"""Are two runs of the same config the same? Every artifact file and every stored row, compared.

Made to check that ``[run] engine = "ray"`` reproduces the local engine on a whole config (the
demo), but it compares any two runs: two work directories (``runs/<name>``) and, optionally, the
two stores they were published into. Per file: safetensors shards and other binaries byte for
byte; ``.npz`` archives array by array (bit-identical, else the largest difference); JSON after
dropping what records *when* or *how long* (timings, timestamps, durations). Per table of the
store: every row, ordered by primary key, without timestamp and publication-token columns.

    PYTHONPATH=. python benchmarks/compare_runs.py RUN_A RUN_B [--stores URL_A URL_B]

Prints one line per difference and a summary; exits 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import MetaData, create_engine, select

# What records when or how long something ran: expected to differ between two runs.
VOLATILE_NAMES = {"seconds", "elapsed", "duration", "started", "finished", "time", "timestamp"}
VOLATILE_SUFFIXES = ("_s", "_seconds", "_at", "_time", "_timestamp", "_rss", "rss_bytes")
VOLATILE_FILES = {"timings.json"}
VOLATILE_COLUMNS = ("created_at", "published_at", "updated_at", "token", "publication")


def _volatile(key: str) -> bool:
    key = key.lower()
    return key in VOLATILE_NAMES or key.endswith(VOLATILE_SUFFIXES)


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not _volatile(str(k))}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def _npz_diff(a: Path, b: Path) -> str | None:
    with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
        if sorted(x.files) != sorted(y.files):
            return f"keys {sorted(set(x.files) ^ set(y.files))} differ"
        worst: list[str] = []
        for key in x.files:
            u, v = x[key], y[key]
            if u.shape != v.shape or u.dtype != v.dtype:
                worst.append(f"{key}: {u.shape}/{u.dtype} vs {v.shape}/{v.dtype}")
            elif u.tobytes() != v.tobytes():
                if u.dtype.kind in "fc":
                    gap = float(np.nanmax(np.abs(u.astype(np.float64) - v.astype(np.float64))))
                    worst.append(f"{key}: max |Δ| {gap:.3g}")
                else:
                    worst.append(f"{key}: {int((u != v).sum())} of {u.size} values differ")
        return "; ".join(worst) or None


def compare_dirs(a: Path, b: Path) -> Iterator[str]:
    """One message per file that is missing on one side or differs."""
    fa, fb = _files(a), _files(b)
    for name in sorted(set(fa) | set(fb)):
        if name not in fa or name not in fb:
            yield f"{name}: only in {'A' if name in fa else 'B'}"
            continue
        if Path(name).name in VOLATILE_FILES or name.endswith((".log", ".lock")):
            continue
        pa, pb = fa[name], fb[name]
        if name.endswith(".npz"):
            diff = _npz_diff(pa, pb)
            if diff:
                yield f"{name}: {diff}"
        elif name.endswith(".json"):
            if _strip(json.loads(pa.read_text())) != _strip(json.loads(pb.read_text())):
                yield f"{name}: JSON differs (beyond timings)"
        elif pa.read_bytes() != pb.read_bytes():
            yield f"{name}: bytes differ ({pa.stat().st_size} vs {pb.stat().st_size})"


def compare_stores(url_a: str, url_b: str) -> Iterator[str]:
    """One message per table whose rows differ (timestamps and publication tokens left out)."""
    engines = create_engine(url_a), create_engine(url_b)
    metadata = MetaData()
    metadata.reflect(engines[0])
    for table in metadata.sorted_tables:
        columns = [c for c in table.columns if not any(v in c.name for v in VOLATILE_COLUMNS)]
        query = select(*columns).order_by(*table.primary_key.columns)
        rows = []
        for engine in engines:
            with engine.connect() as conn:
                rows.append([tuple(r) for r in conn.execute(query)])
        if rows[0] != rows[1]:
            differing = sum(x != y for x, y in zip(rows[0], rows[1], strict=False))
            yield (
                f"table {table.name}: {len(rows[0])} vs {len(rows[1])} rows, {differing} differing"
            )
    for engine in engines:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--stores", nargs=2, metavar=("URL_A", "URL_B"))
    args = parser.parse_args()
    n_files = len(_files(args.run_a))
    problems = list(compare_dirs(args.run_a, args.run_b))
    if args.stores:
        problems += list(compare_stores(*args.stores))
    for line in problems:
        print(line)
    where = " and the two stores" if args.stores else ""
    print(f"{n_files} files{where} compared: {len(problems)} differences")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
