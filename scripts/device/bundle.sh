#!/usr/bin/env bash
# Prepare what a lent GPU machine needs for a full-corpus trainer run (see docs/pipeline.md,
# "Full corpus on a GPU"). The device image has Python 3.12 with torch, numpy, scipy,
# safetensors, rich, tqdm, typer, httpx, matplotlib, numba and scikit-learn (umap-learn's needs,
# KINDS.md), but none of the packages below, and it
# cannot reach a registry: we carry them as wheels, at the versions this project's venv uses.
#   .whl/       wheels for CPython 3.12, manylinux x86_64 (or pure Python)
#   .devdata/   the model and the data files the run reads (a copy: ../shared does not travel)
# Both folders are ignored by git and carried with the device tool's `carry` (64 MiB in all).
set -euo pipefail
cd "$(dirname "$0")/../.."
SHARED=${PROTSAE_SHARED_DIR:-../shared}
PIP=.venv/bin/pip
PACKAGES=(fair-esm pydantic pydantic_core pydantic-settings python-dotenv annotated-types
  typing-inspection sqlalchemy greenlet alembic mako anthropic jiter docstring_parser httpx2
  httpcore2 truststore opentelemetry-api sniffio
  goatools ftpretty xlsxwriter openpyxl et_xmlfile pydot biopython umap-learn pynndescent)

pins=()
for name in "${PACKAGES[@]}"; do
  version=$($PIP show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
  [[ -n "$version" ]] || { echo "bundle: $name is not installed in .venv (run make install)" >&2; exit 1; }
  pins+=("$name==$version")
done
rm -rf .whl && mkdir -p .whl
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
           manylinux1_x86_64 manylinux_2_24_x86_64; do platforms+=(--platform "$tag"); done
# fair-esm publishes no wheel: build theirs here (pure Python, so any platform works).
for pin in "${pins[@]}"; do
  if ! $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${platforms[@]}" -d .whl "$pin" 2>/dev/null; then
    $PIP wheel -q --no-deps -w .whl "$pin"
  fi
done

# goatools ships 14 MB of its own test data; the run does not read it and the carry limit is tight.
python3 -m zipfile -l .whl/goatools-*.whl >/dev/null
zip -q -d .whl/goatools-*.whl 'goatools/test_data/*' || true

rm -rf .devdata && mkdir -p .devdata/data/go .devdata/data/proteins .devdata/data/residue_annotations .devdata/models
cp "$SHARED"/data/proteins/*.tsv.gz .devdata/data/proteins/
cp "$SHARED"/data/go/go-basic.obo.gz .devdata/data/go/
cp "$SHARED"/data/residue_annotations/*.tsv.gz .devdata/data/residue_annotations/  # concepts
# fair-esm loads a local checkpoint only with its contact-regression file beside it.
cp "$SHARED"/models/esm2_t4_2M_sprot14mini.pt "$SHARED"/models/esm2_t4_2M_sprot14mini-contact-regression.pt \
  .devdata/models/
du -sh .whl .devdata
