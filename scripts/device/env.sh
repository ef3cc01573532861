# Source this ON a lent GPU machine, in the repository root, after scripts/device/bundle.sh ran
# here and its folders were carried (carry = [".whl", ".devdata"]): it installs the wheels the
# device image lacks and points the project at the carried data, e.g.
#   source scripts/device/env.sh && python3 benchmarks/bench_encode.py --device cuda
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}  # WHEELS=none: use the packages already installed (e.g. this venv)
if [[ -d $WHEELS ]]; then
  $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export COLUMNS=${COLUMNS:-200}  # rich tables in the logs: dictionary names not cut to "L3-pro…"
export PROTSAE_SHARED_DIR=${PROTSAE_SHARED_DIR:-$PWD/.devdata}
export PROTSAE_DATA_DIR=${PROTSAE_DATA_DIR:-/tmp/protsae-data}
export PROTSAE_DATABASE_URL=${PROTSAE_DATABASE_URL:-sqlite:///$PROTSAE_DATA_DIR/store.sqlite}
export OUT=${OUT:-/tmp/protsae-out}
mkdir -p "$PROTSAE_DATA_DIR" "$OUT"
