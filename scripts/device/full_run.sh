#!/usr/bin/env bash
# Runs ON a lent GPU machine, in the repository root, after scripts/device/bundle.sh ran here:
#   device tool: run  command="bash scripts/device/full_run.sh"  carry=[".whl", ".devdata"]
# Installs the carried wheels, runs the trainer's stages on the full corpus (CUDA picked by
# device = "auto"), and leaves in $OUT: device.txt, run.log and summary.json (time per stage,
# FVE / L0 / dead / loss recovered per dictionary, GO hit rates, concepts): small files only,
# since at most 64 MiB come back. A rerun on the same warm machine resumes where it stopped.
set -euo pipefail
CONFIG=${1:-configs/full-mini-device.toml}
STAGES=${2:-ingest,embed,train,analyze,go,concepts}
source "$(dirname "$0")/env.sh"
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no GPU"; nproc; df -h /tmp | tail -1; } \
  | tee "$OUT/device.txt"
$PYTHON -m trainer.cli db upgrade
status=0
$PYTHON -m trainer.cli trainer run "$CONFIG" --stages "$STAGES" 2>&1 | tee -a "$OUT/run.log" || status=$?
$PYTHON -m trainer.cli trainer summary "$CONFIG" --json "$OUT/summary.json" | tee -a "$OUT/run.log"
exit "$status"
