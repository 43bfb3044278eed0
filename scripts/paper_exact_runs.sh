#!/usr/bin/env bash
# Issue 38's experiment on the 2-core CPU, in the order that answers its question first: is the paper's
# haf > baseline gap there under the paper code's setup (b: configs/paper-exact-smollm2-cpu.yaml, hafrm's readout;
# c: the same with the paper code's padded-last-column readout), and is it the readout or the checkpoint selection?
# (b) and (c) for baseline, then haf, then dpo, then (a) hafrm's defaults at the same scale. Every run: Beaver Safe
# (the 4,133 / 1,002 prompt-disjoint split), seed 0, the first 1,024 training pairs after 300 are held out as the
# validation set (64 steps of 16 = one pass), evaluated at steps 32 and 64 on the validation set and the first 400
# test pairs. `hafrm report` skips finished runs and resumes cut-off ones, so the script can be started again.
# usage: scripts/paper_exact_runs.sh OUTPUT_DIR DATA_ROOT     (logs: OUTPUT_DIR/<arm>.log), hafrm's env active
set -euo pipefail
out=$1
data=$2
here="$(cd "$(dirname "$0")/.." && pwd)"
common=(--protocol learning-curve --datasets beaver-safe --seeds "${SEEDS:-0}" --steps 32,64 --data-root "$data"
  --no-ood --validation-pairs 300 --max-eval-pairs 400 --max-train-pairs 1024 --save-total-limit 1)
exact=(--config "$here/configs/paper-exact-smollm2-cpu.yaml")
their_readout=(--reward-readout ablation-padded-last-column --micro-batch-size 1)
defaults=(--learning-rate 3e-5 --freeze-layers 22)  # (a): the claim runs' settings, everything else default

arm() {  # arm NAME METHOD ARGS...: one report call, its output appended to OUTPUT_DIR/NAME.log
  local name=$1 method=$2
  shift 2
  mkdir -p "$out"
  echo "=== $name $method start $(date -u +%FT%TZ)" >> "$out/$name.log"
  hafrm report "${common[@]}" --methods "$method" "$@" --output "$out/$name" >> "$out/$name.log" 2>&1
  echo "=== $name $method end $(date -u +%FT%TZ)" >> "$out/$name.log"
}

for method in baseline haf dpo; do
  arm b-exact-our-readout "$method" "${exact[@]}"
  arm c-exact-their-readout "$method" "${exact[@]}" "${their_readout[@]}"
done
for method in baseline haf dpo; do
  arm a-defaults "$method" "${defaults[@]}"
done
