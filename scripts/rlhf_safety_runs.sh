#!/usr/bin/env bash
# The RLHF Safety experiment's long runs (docs/report/rlhf-safety/README.md), in order, each resumed where it stopped:
# the split, the two reward models (baseline, haf) and the judge. A finished model (its hafrm.json and
# eval_metrics.json written) is not run again; a cut-off one resumes from its last checkpoint (every 32 steps).
#
#   nohup bash scripts/rlhf_safety_runs.sh ../shared/data outputs/rlhf-safety > outputs/rlhf-safety.log 2>&1 &
set -euo pipefail
DATA_ROOT=${1:?usage: rlhf_safety_runs.sh DATA_ROOT OUTPUT}
OUT=${2:?usage: rlhf_safety_runs.sh DATA_ROOT OUTPUT}
mkdir -p "$OUT/data"
python -c "import json, sys; from hafrm.experiments.rlhf_safety import write_split; \
print(json.dumps(write_split(sys.argv[1], sys.argv[2])))" "$DATA_ROOT" "$OUT/data" | tee "$OUT/data/sizes.json"

# The claim runs' setup (docs/report/claim-beaver-safe): top 8 of 30 layers and the reward head trained, lr 3e-5,
# batch 16, max length 512, 256 steps (two epochs of about 2,050 pairs), exported at the last step; tested on the
# held-out pairs at steps 128 and 256, per-pair scores kept.
train_model() {  # NAME METHOD SEED TRAIN_PART
  local folder="$OUT/$1"
  if [[ -f "$folder/hafrm.json" && -f "$folder/eval_metrics.json" ]]; then
    echo "$(date -u +%FT%TZ) $1 finished earlier; kept"
    return
  fi
  mkdir -p "$folder"
  echo "$(date -u +%FT%TZ) $1: training"
  hafrm train --method "$2" --seed "$3" --train-data "$OUT/data/$4_pairs.jsonl.gz" \
    --eval-data "$OUT/data/heldout_pairs.jsonl.gz" --freeze-layers 22 --learning-rate 3e-5 --batch-size 16 \
    --max-steps 256 --eval-at-steps 128,256 --keep-eval-scores --save-steps 32 --save-total-limit 2 \
    --output-dir "$folder" --resume-from-checkpoint auto >> "$folder/run.log" 2>&1
  echo "$(date -u +%FT%TZ) $1: done"
}

train_model rm-baseline baseline 0 rm
train_model rm-haf haf 0 rm
train_model judge baseline 1 judge
