#!/usr/bin/env bash
# Issue 14's claim runs, in the order they are run on the 2-core CPU: the required minimum first, then the
# out-of-distribution tables and Best-of-N. Every `hafrm report` call skips the runs that finished earlier and resumes
# a cut-off run from its last checkpoint, so the script can be started again after any stop. Results are copied into
# docs/report with scripts/keep_run_scores.sh (see the claim READMEs); on a fresh machine, where OUTPUT_DIR is gone,
# each part first copies back the runs kept in docs/report/claim-<part>, so finished runs are not trained again.
# Best-of-N needs the models themselves, which are not kept: each is scored as soon as it is trained, into one
# candidates file (kept as docs/report/claim-best-of-n/beaver-safe.json), which names the models by their paths under
# OUTPUT_DIR, so give the same OUTPUT_DIR every time.
# usage: scripts/claim_runs.sh OUTPUT_DIR DATA_ROOT     (logs: OUTPUT_DIR/<part>.log), with hafrm's environment active
set -euo pipefail
if ! command -v hafrm > /dev/null; then
  echo "claim_runs.sh: no hafrm on PATH; activate the environment hafrm is installed in first" >&2
  exit 1
fi
out=$1
data=$2
kept_reports="$(cd "$(dirname "$0")/.." && pwd)/docs/report"
common=(--data-root "$data" --learning-rate 3e-5 --batch-size 16)
shared=("${common[@]}" --no-ood)
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
# Best-of-N (Table 4) on the 181 Beaver Safe test prompts, none of which any model here was trained on: 4 responses
# of up to 128 tokens sampled from the embedded model, once, into a candidates file that every model scores as soon
# as it is trained (models are not kept in the repository, and a later session may start on a fresh machine)
bon=$out/best-of-n/beaver-safe.json
kept_bon=$kept_reports/claim-best-of-n/beaver-safe.json
mkdir -p "$(dirname "$bon")"
[ -e "$bon" ] || [ ! -e "$kept_bon" ] || cp "$kept_bon" "$bon"

best_of_n() {  # best_of_n ARGS...: one `hafrm best-of-n` call that rewrites the candidates file, logged
  echo "=== best-of-n $(date -u +%FT%TZ): $*" >> "$out/best-of-n.log"
  if ! hafrm best-of-n --output "$bon" "$@" >> "$out/best-of-n.log" 2>&1; then
    echo "claim_runs.sh: hafrm best-of-n failed (see $out/best-of-n.log); a model that came back from docs/report" \
      "as kept scores only cannot score candidates: remove its run folder and run again to train it" >&2
    exit 1
  fi
}

if [ ! -e "$bon" ]; then  # the test part of the claim split, whose distinct prompts are sampled from
  prompts=$out/best-of-n/prompts.jsonl
  python -c "import json, sys; from hafrm.experiments.curves import claim_split
for pair in claim_split('beaver-safe', sys.argv[1])[1]: print(json.dumps(pair))" "$data" > "$prompts"
  best_of_n --prompts "$prompts" --num-prompts 1000 --n 4 --max-new-tokens 128
fi
# out of distribution (Table 3, internal, and the local RewardBench rows): seed 0 of each method trained again as in
# the learning curves, tested at its last step on every claim set's test part; its own set's scores should match the
# learning-curve run's at step 256 (same seed, same data order). One method at a time, each scored as a Best-of-N
# selector while its model exists; the last call reports all three (nothing left to train).
ood=("${common[@]}" "${frozen[@]}" --save-steps 32 --seeds 0 --steps 256)
runs=$out/beaver-safe-ood/runs
selectors=(
  "$runs/beaver-safe-baseline-alpha0-seed0/model@reward"  # the reference, listed first
  "$runs/beaver-safe-haf-alpha0.2-seed0/model@reward"
  "$runs/beaver-safe-haf-alpha0.2-seed0/model@implicit"
  "$runs/beaver-safe-haf-alpha0.2-seed0/model@combined"
  "$runs/beaver-safe-dpo-alpha0-seed0/model@implicit"
)
for method in baseline haf dpo; do
  part beaver-safe-ood --protocol learning-curve "${ood[@]}" --datasets beaver-safe --methods "$method"
  mapfile -t heads < <(printf '%s\n' "${selectors[@]}" | grep -F -- "/beaver-safe-$method-")
  best_of_n --candidates "$bon" --selector "${heads[@]}"
done
part beaver-safe-ood --protocol learning-curve "${ood[@]}" --datasets beaver-safe --methods baseline,haf,dpo
# the judge: the model trained longest on the largest training part (a Bradley-Terry baseline, seed 3, two epochs of
# Beaver Safe's 4,133 pairs; its held-out accuracy is in its report). It shares the baseline's objective, so if it
# leans towards one selector, it is the baseline's. Scored, then every selector compared against it.
part best-of-n-judge --protocol learning-curve "${common[@]}" "${frozen[@]}" --save-steps 32 \
  --datasets beaver-safe --methods baseline --seeds 3 --steps 512
best_of_n --candidates "$bon" --judge "$out/best-of-n-judge/runs/beaver-safe-baseline-alpha0-seed3/model@reward" \
  --selector "${selectors[@]}"
part hh-harmless-ood --protocol learning-curve "${ood[@]}" --datasets hh-harmless --methods baseline,haf,dpo
# HH-Helpful (the Chat group, "if the budget allows"): the same three methods trained on it, tested on every set
part hh-helpful-ood --protocol learning-curve "${ood[@]}" --datasets hh-helpful --methods baseline,haf,dpo
