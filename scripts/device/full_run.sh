#!/usr/bin/env bash
# Runs ON a lent GPU machine, in the repository root, after scripts/device/bundle.sh ran here:
#   device tool: run  command="bash scripts/device/full_run.sh"  carry=[".whl", ".devdata"]
# Installs the carried wheels, runs the trainer's stages on the full corpus (CUDA picked by
# device = "auto"), and leaves in $OUT: device.txt, run.log and summary.json (time per stage,
# FVE / L0 / dead / loss recovered per dictionary, GO hit rates, concepts): small files only,
# since at most 64 MiB come back. A rerun on the same warm machine resumes where it stopped.
#
# Stages run one at a time, in the order given, and summary.json is rewritten after each, so a
# call that runs out of time still returns every finished stage's figures. BUDGET_S (seconds,
# default none) stops the stage in progress (SIGINT) early enough to write the summary; the
# next call on the same warm machine resumes it.
set -euo pipefail
CONFIG=${1:-configs/full-mini-device.toml}
STAGES=${2:-ingest,embed,train,analyze,go,publish,concepts}
BUDGET_S=${BUDGET_S:-0}
START=$SECONDS
source "$(dirname "$0")/env.sh"
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no GPU"; nproc; df -h /tmp | tail -1; } \
  | tee -a "$OUT/device.txt"
$PYTHON -m trainer.cli db upgrade
status=0
summary_pid=
# The summary (a fresh Python process: ~5 s) runs beside the next stage, not before it; a new
# one starts only when the last has finished, so they never write $OUT/summary.json at once.
write_summary() {
  [[ -z $summary_pid ]] || wait "$summary_pid" || true
  { $PYTHON -m trainer.cli trainer summary "$CONFIG" --json "$OUT/summary.json" > "$OUT/summary.txt" 2>&1 || true; } &
  summary_pid=$!
}
for stage in ${STAGES//,/ }; do
  limit=()
  if (( BUDGET_S > 0 )); then
    left=$(( BUDGET_S - (SECONDS - START) - 10 ))  # 10 s to finish the summary
    (( left > 5 )) || { echo "full_run: no time left for $stage" | tee -a "$OUT/run.log"; status=124; break; }
    limit=(timeout --signal=INT --kill-after=5 "$left")
  fi
  echo "full_run: $stage at $(( SECONDS - START )) s" | tee -a "$OUT/run.log"
  "${limit[@]}" $PYTHON -m trainer.cli trainer run "$CONFIG" --stages "$stage" 2>&1 | tee -a "$OUT/run.log" \
    || { status=$?; echo "full_run: $stage stopped (exit $status)" | tee -a "$OUT/run.log"; }
  write_summary
  (( status == 0 )) || break
done
[[ -z $summary_pid ]] || wait "$summary_pid" || true
cat "$OUT/summary.txt" 2>/dev/null || echo "full_run: no stage ran, so no summary"
# BENCH_ENCODE=1: with the stages done and at least 90 s of the budget left, also measure encode
# latency on the GPU (benchmarks/bench_encode.py), into $OUT/bench_encode.txt.
if [[ ${BENCH_ENCODE:-0} == 1 && $status == 0 ]]; then
  left=$(( BUDGET_S > 0 ? BUDGET_S - (SECONDS - START) - 5 : 300 ))
  if (( left >= 90 )); then
    timeout --signal=INT "$left" $PYTHON benchmarks/bench_encode.py --device cuda 2>&1 \
      | tee "$OUT/bench_encode.txt" || true
  fi
fi
exit "$status"
