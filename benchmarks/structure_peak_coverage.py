"""How many structure examples show the residue their feature peaks on, in a published store.

For every example of every feature of the published runs whose protein has a structure chain:
does the chain the page shows resolve the example's peak residue (``max_position``)? The chain
shown is the one stored with the example (``top_examples.structure_id``, revision
0004_structure_coverage on); a store from before that revision gets the rule the pages used then
(the chain with the largest share of its own residues aligned, the first stored on ties). Prints
the share for the "structure" group and for every example drawn with a structure, per
dictionary and in all. Reads the store with plain SQL, so stores of either revision work.

    PYTHONPATH=. python benchmarks/structure_peak_coverage.py [--url sqlite:///data/protsae.sqlite]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from sqlalchemy import create_engine, inspect, text

from app.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=Settings().database_url)
    args = parser.parse_args()
    engine = create_engine(args.url)
    stored = "structure_id" in {c["name"] for c in inspect(engine).get_columns("top_examples")}
    with engine.connect() as conn:
        chains: dict[int, list[tuple[int, float, set[int]]]] = defaultdict(list)
        query = "SELECT id, protein_id, coverage, sequence_positions FROM structures ORDER BY id"
        for sid, pid, cov, positions in conn.execute(text(query)):
            resolved = {int(p) for p in _json(positions) if int(p) >= 0}
            chains[pid].append((sid, float(cov or 0.0), resolved))
        columns = "t.structure_id, t.structure_peak_covered" if stored else "NULL, NULL"
        rows = conn.execute(
            text(f"""
            SELECT s.name, t.bin, t.protein_id, t.max_position, {columns}
            FROM top_examples t JOIN features f ON f.id = t.feature_id
            JOIN saes s ON s.id = f.sae_id JOIN runs r ON r.id = s.run_id
            WHERE r.status = 'published'""")
        )
        counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for sae, bin_, pid, peak, structure_id, peak_covered in rows:
            own = chains.get(pid)
            if not own or peak is None:
                continue
            if stored:
                if structure_id is None:
                    continue
                covered = bool(peak_covered)
            else:  # the old rule: most of the chain's own residues aligned, first on ties
                best = max(own, key=lambda c: (c[1], -c[0]))
                covered = int(peak) in best[2]
            for group in ("structure" if bin_ == "structure" else "other", "all"):
                for name in (sae, "(all dictionaries)"):
                    counts[(name, group)][0] += covered
                    counts[(name, group)][1] += 1
    engine.dispose()
    rule = "stored chain" if stored else "old rule (chain coverage)"
    print(f"store {args.url}; chain shown: {rule}")
    print(f"{'dictionary':32} {'structure group':>24} {'every example with a chain':>28}")
    for name in sorted({n for n, _ in counts}, key=lambda n: (n.startswith("("), n)):
        cells = []
        for group in ("structure", "all"):
            hit, n = counts[(name, group)]
            cells.append(f"{hit}/{n} = {100 * hit / n:.1f}%" if n else "—")
        print(f"{name:32} {cells[0]:>24} {cells[1]:>28}")


def _json(value: object) -> list[int]:
    """A JSON column as SQLite (text) or PostgreSQL (decoded) returns it."""
    decoded = json.loads(value) if isinstance(value, str) else value
    return [int(v) for v in decoded] if isinstance(decoded, list) else []


if __name__ == "__main__":
    main()
