#!/usr/bin/env bash
# The RLHF Safety experiment's long runs (docs/report/rlhf-safety/README.md), in order, each resumed where it stopped:
# the split, the two reward models (baseline, haf), the judge, the two policies and their evaluations. A finished
# piece (a model's hafrm.json and eval_metrics.json, a policy's rlhf.json, an evaluation's file) is not run again; a
# cut-off model or policy resumes from its last checkpoint.
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

# The policies: the same start (the embedded SmolLM2-135M-Instruct), prompts (the rm part's distinct prompts of at
# most 128 tokens), seed and schedule, one against each reward model; GRPO with 4 completions of up to 64 tokens for
# each of 4 prompts a step, beta 0.04, lr 1e-5 (constant), 100 steps, a checkpoint every 25.
train_policy() {  # NAME REWARD_MODEL_FOLDER
  local folder="$OUT/$1"
  if [[ -f "$folder/rlhf.json" ]]; then
    echo "$(date -u +%FT%TZ) $1 finished earlier; kept"
    return
  fi
  mkdir -p "$folder"
  echo "$(date -u +%FT%TZ) $1: training"
  hafrm rlhf --reward-model "$OUT/$2" --prompts "$OUT/data/rm_pairs.jsonl.gz" --max-prompt-length 128 \
    --num-generations 4 --per-device-train-batch-size 16 --max-completion-length 64 --beta 0.04 \
    --learning-rate 1e-5 --max-steps 100 --save-steps 25 --seed 0 --output-dir "$folder" \
    --resume-from-checkpoint auto >> "$folder/run.log" 2>&1
  echo "$(date -u +%FT%TZ) $1: done"
}

train_policy policy-baseline rm-baseline
train_policy policy-haf rm-haf

# Evaluation on the held-out prompts: 2 completions per prompt (temperature 1, seed 0, up to 64 tokens) from the
# start policy (step 0, shared) and from each policy's checkpoints, scored by both reward models and the judge.
mkdir -p "$OUT/eval"
JUDGES=("$OUT/rm-baseline" "$OUT/rm-haf" "$OUT/judge")
evaluate() {  # STEP POLICY_SPEC...
  local file="$OUT/eval/step-$1.jsonl"
  if [[ -f "$file" ]]; then
    echo "$(date -u +%FT%TZ) evaluation at step $1 finished earlier; kept"
    return
  fi
  echo "$(date -u +%FT%TZ) evaluation at step $1"
  hafrm policy-eval --prompts "$OUT/data/heldout_pairs.jsonl.gz" --max-prompt-length 128 --samples 2 \
    --max-new-tokens 64 --seed 0 --policy "${@:2}" --reward-model "${JUDGES[@]}" --batch-size 16 \
    --output "$file" >> "$OUT/eval/run.log" 2>&1
}
evaluate 0 start=default
for step in 25 50 75 100; do
  evaluate "$step" "haf=$OUT/policy-haf/checkpoint-$step" "baseline=$OUT/policy-baseline/checkpoint-$step"
done
echo "$(date -u +%FT%TZ) all done"
