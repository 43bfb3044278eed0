#!/usr/bin/env bash
# The checks that need a GPU, end to end in at most 10 minutes on one H200 (issue 36). Each step has its own time
# limit; a failed step is reported and the next one runs. Results go to $OUT (the device tool's folder) or
# outputs/gpu-check; commit them into docs/benchmark.md with the date.
#
#   scripts/gpu_check_prepare.sh        here, once: fills the git-ignored .whl/ (wheels, model config, data)
#   scripts/gpu_check.sh --dry-run      here, on a CPU: checks that every step's inputs exist, runs nothing heavy
#   scripts/gpu_check.sh                there, with .whl carried: the checks
#
# Steps (seconds):  install 30 | unit tests on the GPU machine (the paths that pick a device take CUDA there) 120 | bf16 against fp32 60 | flex against SDPA 60 |
#   the Trainer with FSDP on one process (train, export, compare with the unsharded run, resume once) 120 |
#   throughput against TRL, HH-Harmless and PKU-SafeRLHF, batch 16, length 512 and 2048, 180 | with what is left of
#   570 s, a learning curve of baseline and haf (full fine-tuning, Beaver Safe, towards the paper's 3,200 steps).
# The model: GPU_CHECK_MODEL (a folder on the machine), else a random model of SmolLM2-135M's architecture built from
# .whl/model (speed, memory, bf16 and flex are as valid on random weights; the learning curve is then skipped).
set -uo pipefail
cd "$(dirname "$0")/.."
dry_run=false
[[ "${1:-}" == "--dry-run" ]] && dry_run=true
out=${OUT:-outputs/gpu-check}
mkdir -p "$out"
start=$SECONDS
budget=570
log() { echo "[gpu-check $((SECONDS - start))s] $*" | tee -a "$out/steps.log"; }
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log the outcome, never stop the script
  local name=$1 limit=$2
  shift 2
  if $dry_run; then
    log "would run $name (limit ${limit}s): $*"
    return 0
  fi
  log "start $name (limit ${limit}s)"
  PYTHONUNBUFFERED=1 timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local status=$?
  log "end $name: exit $status ($(tail -1 "$out/$name.log" | cut -c1-300))"
}

# ---------------------------------------------------------------- inputs
missing=()
for wheel in datasets trl gguf dill multiprocess; do
  compgen -G ".whl/${wheel}-*.whl" > /dev/null || missing+=(".whl/${wheel}-*.whl")
done
for file in .whl/model/config.json .whl/model/tokenizer.json .whl/data/pku-saferlhf .whl/data/hh-rlhf-harmless-base \
  benchmarks/gpu_checks.py benchmarks/train_throughput.py benchmarks/fsdp_trainer_check.py configs/accelerate/fsdp.yaml; do
  [[ -e "$file" ]] || missing+=("$file")
done
if ((${#missing[@]})); then
  log "missing inputs (run scripts/gpu_check_prepare.sh here first): ${missing[*]}"
  exit 2
fi
log "inputs present: $(ls .whl/*.whl | wc -l) wheels, model config, data"

# ---------------------------------------------------------------- environment and model
if ! $dry_run; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PWD/src:/tmp/site" || { log "wheel install failed"; exit 3; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out/steps.log"
fi
export HF_HUB_OFFLINE=1 HAFRM_CACHE=/tmp/hafrm-cache HAFRM_DATA_ROOT="$PWD/.whl/data"
model=/tmp/hafrm-cache/models/SmolLM2-135M-Instruct-fp32  # where hafrm (and the benchmarks) find the default model
$dry_run || mkdir -p "$(dirname "$model")"
if [[ -n "${GPU_CHECK_MODEL:-}" ]]; then
  $dry_run || ln -sfn "$GPU_CHECK_MODEL" "$model"
  log "model: $GPU_CHECK_MODEL"
else
  $dry_run || python3 - "$model" <<'EOF'
import shutil, sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
target = sys.argv[1]
torch.manual_seed(0)
AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(".whl/model")).save_pretrained(target)
for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
    shutil.copy(f".whl/model/{name}", target)
EOF
  log "model: a random SmolLM2-135M-architecture model (no GPU_CHECK_MODEL): the learning curve is skipped"
fi

# ---------------------------------------------------------------- checks
step unit-tests 120 python3 -m pytest -q -x -m "not slow" -p no:cacheprovider tests/test_model.py tests/test_families.py \
  tests/test_losses.py tests/test_policy_logits.py tests/test_paper_exact.py
step precision 60 python3 benchmarks/gpu_checks.py precision --model "$model" --steps 30 --output /tmp/gpu-check
step flex-512 30 python3 benchmarks/gpu_checks.py flex --model "$model" --batches 8 --batch-size 16 --max-length 512
step flex-2048 30 python3 benchmarks/gpu_checks.py flex --model "$model" --batches 4 --batch-size 16 --max-length 2048
step fsdp-trainer 120 python3 benchmarks/fsdp_trainer_check.py --model "$model" \
  --train-data .whl/data/hh-rlhf-harmless-base --output /tmp/gpu-check/fsdp
for data in hh-harmless pku-saferlhf; do
  for length in 512 2048; do
    step "throughput-$data-$length" 45 python3 benchmarks/train_throughput.py --device cuda --data "$data" \
      --runs trl-reward,hafrm-baseline,trl-dpo,hafrm-dpo,hafrm-haf --steps 6 --rounds 1 --batch-size 16 \
      --max-length "$length" --output "$out/throughput-$data-$length.md"
  done
done
left=$((budget - (SECONDS - start)))
if [[ -n "${GPU_CHECK_MODEL:-}" ]] && ((left > 60)); then
  step learning-curve "$left" python3 -m hafrm.cli report --protocol learning-curve --datasets beaver-safe \
    --methods baseline,haf --seeds 0 --steps 100,200,400,800,1600,3200 --data-root .whl/data --no-ood \
    --learning-rate 1e-5 --batch-size 16 --micro-batch-size 16 --save-total-limit 1 --output "$out/curve"
else
  log "learning curve skipped: ${left}s left, model ${GPU_CHECK_MODEL:-random}"
fi
log "done in $((SECONDS - start))s"
