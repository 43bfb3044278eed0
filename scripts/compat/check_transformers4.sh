#!/usr/bin/env bash
# Does transformers 4.51 + RewardBench 0.1.4 read a hafrm export exactly as hafrm does?
#
#   scripts/compat/check_transformers4.sh [OUTPUT_DIR_OR_REWARD_MODEL_DIR]
#
# 1. Builds (once) a separate venv in .compat/transformers-4.51/: torch==2.13.0 first (rewardbench leaves torch
#    unpinned; the CPU build is the one on disk, and the constraint below stops pip from replacing it), then
#    setuptools<81, transformers==4.51.0, rewardbench==0.1.4.
# 2. With no argument, exports the default model (SmolLM2-135M-Instruct) with a fresh seeded reward head in the
#    project's environment (scripts/compat/hafrm_side.py export).
# 3. Scores the local RewardBench rows (../shared/data/reward-bench/, or $REWARD_BENCH_ROWS) with `hafrm score`
#    (project environment), then with RewardBench's own code in the 4.51 venv (scripts/compat/rewardbench_side.py),
#    prints the max absolute difference per row and fails when one is above 1e-4 ($TOLERANCE).
# Exits 0 with "SKIPPED: ..." when no package registry is reachable (and the venv is not built yet) or the rows
# are absent. Without an argument it then does the same for tiny random exports of other families
# ($COMPAT_FAMILIES, default: Llama, Qwen2, Gemma-2, Mistral with a window, Phi-3 with a window, and a Llama base
# model without a chat template of its own). $HAFRM_PYTHON: the project's python (default .venv/bin/python, else python on PATH).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/scripts/compat"
VENV="$ROOT/.compat/transformers-4.51"
WORK="$ROOT/.compat/work-transformers4"
TOLERANCE="${TOLERANCE:-1e-4}"
ROWS="${REWARD_BENCH_ROWS:-$ROOT/../shared/data/reward-bench/reward_bench_format_sample.jsonl}"
REQUIREMENTS=("setuptools<81" "transformers==4.51.0" "rewardbench==0.1.4")
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# One thread on both sides: the same summation order on every run, however loaded the machine is (a run under full
# load once differed by 9.4e-4 where every other matched to 1.35e-5, cause not found).
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

if [[ -n "${HAFRM_PYTHON:-}" ]]; then MAIN_PY="$HAFRM_PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then MAIN_PY="$ROOT/.venv/bin/python"
else MAIN_PY="$(command -v python)"; fi

if [[ ! -f "$ROWS" ]]; then
    echo "SKIPPED: no RewardBench rows at $ROWS (set REWARD_BENCH_ROWS)"
    exit 0
fi

# ---------------------------------------------------------------- 1. the transformers 4.51 environment
STAMP="torch==2.13.0 ${REQUIREMENTS[*]}"
if [[ ! -f "$VENV/.ready" || "$(cat "$VENV/.ready")" != "$STAMP" ]]; then
    probe="$(mktemp -d)"
    if ! timeout 120 python3 -m pip download --no-deps --quiet --disable-pip-version-check -d "$probe" "rewardbench==0.1.4" >/dev/null 2>&1; then
        rm -rf "$probe"
        echo "SKIPPED: no package registry reachable (pip could not fetch rewardbench==0.1.4), so the transformers 4.51 environment cannot be built"
        exit 0
    fi
    rm -rf "$probe" "$VENV"
    echo "== building $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==2.13.0"
    printf 'torch==2.13.0\n' >"$VENV/torch-constraint.txt"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -c "$VENV/torch-constraint.txt" "${REQUIREMENTS[@]}"
    "$VENV/bin/python" - <<'EOF'
import torch, transformers, rewardbench
assert torch.__version__.startswith("2.13.0"), f"pip replaced torch: {torch.__version__}"
assert transformers.__version__ == "4.51.0", transformers.__version__
print(f"built: torch {torch.__version__}, transformers {transformers.__version__}, rewardbench {rewardbench.__version__}")
EOF
    echo "$STAMP" >"$VENV/.ready"
fi

# ---------------------------------------------------------------- 2. the model
mkdir -p "$WORK"
MODEL="${1:-}"
if [[ -z "$MODEL" ]]; then
    echo "== exporting the default model with a fresh reward head to $WORK/default-export"
    rm -rf "$WORK/default-export"
    "$MAIN_PY" "$HERE/hafrm_side.py" export "$WORK/default-export"
    MODEL="$WORK/default-export"
fi
[[ -d "$MODEL/reward_model" ]] && MODEL="$MODEL/reward_model"
[[ -f "$MODEL/config.json" ]] || { echo "no reward model (config.json) in $MODEL" >&2; exit 2; }
echo "== reward model: $MODEL"
echo "== rows: $ROWS"

# ---------------------------------------------------------------- 3. score both ways and compare
"$MAIN_PY" "$HERE/hafrm_side.py" rows "$ROWS" "$WORK/pairs.jsonl"
# --max-length 4096: RewardBench does not truncate (its rows reach about 1,100 SmolLM2 tokens)
"$MAIN_PY" -m hafrm.cli score "$MODEL" --input "$WORK/pairs.jsonl" --output "$WORK/hafrm-scored.jsonl" --max-length 4096 --batch-size 8
"$VENV/bin/python" "$HERE/rewardbench_side.py" "$MODEL" "$ROWS" "$WORK/hafrm-scored.jsonl" --tolerance "$TOLERANCE"

# ---------------------------------------------------------------- 4. the other families (no argument given only)
# Tiny random models of the families with their own attention rules (sliding windows of 24 tokens, which the
# RewardBench rows cross; Gemma 2's soft-capping; Phi-3's fused projections), exported and read the same way, and a
# base model (llama-base: no chat template of its own, so its export carries the HH text format it trained on).
if [[ -z "${1:-}" ]]; then
    for family in ${COMPAT_FAMILIES:-llama qwen2 gemma2 mistral-window phi3-window llama-base}; do
        echo "== family $family"
        rm -rf "$WORK/family-$family"
        "$MAIN_PY" "$HERE/hafrm_side.py" family "$family" "$WORK/family-$family"
        "$MAIN_PY" -m hafrm.cli score "$WORK/family-$family/reward_model" --input "$WORK/pairs.jsonl" \
            --output "$WORK/family-$family.jsonl" --max-length 4096 --batch-size 8
        "$VENV/bin/python" "$HERE/rewardbench_side.py" "$WORK/family-$family/reward_model" "$ROWS" \
            "$WORK/family-$family.jsonl" --tolerance "$TOLERANCE" | tail -2
    done
fi
