"""How a published run's features are labelled, per dictionary: GO labels before amino-acid
profiles (the GO rule alone, applied to the stored hits as publish did before) and after (a
single-type detector is named by its residue; a withheld GO label says why), and how many
features are single-type detectors.

    PYTHONPATH=. .venv/bin/python benchmarks/label_sources.py [--database-url URL] [--run NAME]
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import cast

from sqlalchemy import select

from app.queries import go_alphas
from app.settings import get_settings
from app.store.engine import make_engine, session_factory
from app.store.schema import Feature, GoEnrichment, GoTerm, Run, Sae
from trainer.explain.labels import GoHit, GoHitLike, go_label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--run", default=None, help="run name (default: the newest published)")
    args = parser.parse_args()
    engine = make_engine(args.database_url or get_settings().sqlalchemy_url)
    with session_factory(engine)() as session:
        runs = select(Run).where(Run.status == "published").order_by(Run.id.desc())
        if args.run:
            runs = runs.where(Run.name == args.run)
        run = session.scalars(runs).first()
        if run is None:
            raise SystemExit("no published run" + (f" named {args.run!r}" if args.run else ""))
        saes = session.scalars(select(Sae).where(Sae.run_id == run.id).order_by(Sae.id)).all()
        alphas = go_alphas(session, [s.id for s in saes])
        print(f"run {run.name}")
        print(f"{'dictionary':<28} {'level':<8} {'live':>5} {'profiled':>8} {'detect.':>7} "
              f"{'GO before':>9} {'GO after':>8} {'aa':>5} {'no-go':>5} {'none':>5}")  # fmt: skip
        for sae in saes:
            features = session.scalars(select(Feature).where(Feature.sae_id == sae.id)).all()
            hits: dict[int, list[GoHit]] = {}
            rows = session.execute(
                select(GoEnrichment, GoTerm)
                .join(GoTerm, GoTerm.id == GoEnrichment.go_id)
                .where(GoEnrichment.sae_id == sae.id)
            )
            for hit, term in rows:
                hits.setdefault(hit.feature_id, []).append(GoHit(
                    hit.go_id, term.name, hit.namespace, term.depth, hit.q_value,
                    hit.fold_enrichment, hit.is_most_specific, hit.q_length,
                ))  # fmt: skip
            alpha = alphas[sae.id]
            before = sum(
                go_label(cast(list[GoHitLike], hits.get(f.id, [])), alpha) is not None
                for f in features
            )
            sources = Counter(f.auto_label_source for f in features)
            live = sum(not f.is_dead for f in features)
            profiled = sum(f.aa_profile is not None for f in features)
            detectors = sum(bool(f.aa_detector) for f in features)
            other = live - sources["auto:go"] - sources["auto:aa"] - sources["auto:no-go"]
            name = sae.name + (" (control)" if sae.is_control else "")
            print(f"{name:<28} {sae.level:<8} {live:>5} {profiled:>8} {detectors:>7} "
                  f"{before:>9} {sources['auto:go']:>8} {sources['auto:aa']:>5} "
                  f"{sources['auto:no-go']:>5} {other:>5}")  # fmt: skip
    engine.dispose()


if __name__ == "__main__":
    main()
