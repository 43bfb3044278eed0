#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with what scripts/gpu_check.sh needs on the lent H200 beyond its image (torch 2.11 + CUDA,
# transformers 5.17, accelerate, peft, pyarrow, pandas, pytest are there; see /work/.library/device/KINDS.md):
#   .whl/*.whl      datasets, trl, gguf and the packages they need that the image lacks, for CPython 3.12
#   .whl/model/     the default model's config and tokenizer (3.4 MiB): its fp32 weights (514 MiB) and even its GGUF
#                   (93 MiB) exceed the 64 MiB a call may carry, so the check builds a random model of the same
#                   architecture unless GPU_CHECK_MODEL names a folder on the machine (e.g. one copied there in parts)
#   .whl/data/      the Beaver Safe and HH-Harmless files of ../shared/data the checks read (4 MiB)
# usage: scripts/gpu_check_prepare.sh [DATA_ROOT]     (default ../shared/data), with hafrm's environment active
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
mkdir -p .whl/model .whl/data
platforms=()
for n in 28 27 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" --platform manylinux2014_x86_64 --platform any -d .whl \
  datasets==4.8.5 trl==1.16.0 gguf==0.18.0 dill==0.4.0 multiprocess==0.70.18 fastapi uvicorn starlette pydantic \
  pydantic-core annotated-types typing-inspection
python - <<'EOF'
import shutil
from hafrm.io.defaults import default_model_path
source = default_model_path()
for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
    if (source / name).exists():
        shutil.copy(source / name, f".whl/model/{name}")
EOF
cp -r "$data/pku-saferlhf" "$data/hh-rlhf-harmless-base" "$data/reward-bench" "$data/SOURCES.md" .whl/data/
du -sh .whl
