#!/usr/bin/env bash
# Issue 14's remaining claim runs (HH-Harmless seed 0 of every method is done), in the order they are run on the
# 2-core CPU. Every `hafrm report` call skips the runs that finished earlier and resumes a cut-off run from its last
# checkpoint, so the script can be started again after any stop. Results are copied into docs/report with
# scripts/keep_run_scores.sh (see the claim READMEs); on a fresh machine, where OUTPUT_DIR is gone, each part first
# copies back the runs kept in docs/report/claim-<part>, so finished runs are not trained again.
# usage: scripts/claim_runs.sh OUTPUT_DIR DATA_ROOT     (logs: OUTPUT_DIR/<part>.log), with hafrm's environment active
set -euo pipefail
if ! command -v hafrm > /dev/null; then
  echo "claim_runs.sh: no hafrm on PATH; activate the environment hafrm is installed in first" >&2
  exit 1
fi
out=$1
data=$2
kept_reports="$(cd "$(dirname "$0")/.." && pwd)/docs/report"
shared=(--data-root "$data" --no-ood --learning-rate 3e-5 --batch-size 16)
frozen=(--freeze-layers 22 --save-total-limit 2)

part() {  # part NAME ARGS...: one report call, its output appended to OUTPUT_DIR/NAME.log
  local name=$1
  shift
  if [ -d "$kept_reports/claim-$name/runs" ]; then  # finished runs kept in the repository: never trained again
    mkdir -p "$out/$name/runs"
    cp -rn "$kept_reports/claim-$name/runs/." "$out/$name/runs/"
  fi
  echo "=== $name start $(date -u +%FT%TZ)" >> "$out/$name.log"
  hafrm report "$@" --output "$out/$name" >> "$out/$name.log" 2>&1
  echo "=== $name done $(date -u +%FT%TZ)" >> "$out/$name.log"
}

mkdir -p "$out"
# full fine-tuning, one run per method on Beaver Safe: does the frozen-trunk conclusion carry over?
part beaver-safe-full --protocol learning-curve "${shared[@]}" --save-total-limit 1 \
  --datasets beaver-safe --methods baseline,haf,dpo --seeds 0 --steps 16,32,64,128
part hh-harmless --protocol learning-curve "${shared[@]}" "${frozen[@]}" --datasets hh-harmless \
  --methods baseline,haf,dpo --seeds 0,1,2 --steps 16,32,64,128,256
# the policy ratio (paper Figure 6), evaluated at the last step only, so checkpointed every 32 steps besides (a
# session's end then costs at most 32 steps); alpha 0 and 0.2 reuse the learning-curve runs
part beaver-safe --protocol alpha-sweep "${shared[@]}" "${frozen[@]}" --save-steps 32 --datasets beaver-safe \
  --seeds 0,1 --steps 256
