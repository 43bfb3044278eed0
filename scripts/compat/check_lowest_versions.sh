#!/usr/bin/env bash
# Do the unit tests pass with the lowest versions pyproject.toml allows?
#
#   scripts/compat/check_lowest_versions.sh [extra pytest args]
#
# Builds .compat/lowest/ (rebuilt whenever the pinned set changes): torch==2.13.0 first (the only CPU build on
# this machine's disk: pyproject's torch floor is declared, not tested), then transformers, peft, accelerate,
# datasets, numpy and safetensors pinned to their lower bounds in pyproject.toml (scripts/compat/
# lowest_requirements.py reads them, so they cannot drift apart), the other runtime and `dev` requirements as
# declared; then the project itself with --no-deps, and runs `python -m pytest -q -m "not slow"`.
# Exits 0 with "SKIPPED: ..." when the environment must be built and no package registry is reachable.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/.compat/lowest"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1

REQUIREMENTS="$(python3 "$ROOT/scripts/compat/lowest_requirements.py" "$ROOT/pyproject.toml")"
if [[ ! -f "$VENV/.ready" || "$(cat "$VENV/.ready")" != "$REQUIREMENTS" ]]; then
    transformers_pin="$(grep '^transformers==' <<<"$REQUIREMENTS")"
    probe="$(mktemp -d)"
    if ! timeout 120 python3 -m pip download --no-deps --quiet --disable-pip-version-check -d "$probe" "$transformers_pin" >/dev/null 2>&1; then
        rm -rf "$probe"
        echo "SKIPPED: no package registry reachable (pip could not fetch $transformers_pin), so the lowest-versions environment cannot be built"
        exit 0
    fi
    rm -rf "$probe" "$VENV"
    echo "== building $VENV with:"
    echo "$REQUIREMENTS" | sed 's/^/   /'
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==2.13.0"
    echo "$REQUIREMENTS" >"$VENV/requirements.txt"
    # The pins are also constraints, so no `dev` requirement can pull a newer transformers/peft/... in.
    grep -E '==' "$VENV/requirements.txt" >"$VENV/constraints.txt"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -c "$VENV/constraints.txt" -r "$VENV/requirements.txt"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -e "$ROOT"
    echo "$REQUIREMENTS" >"$VENV/.ready"
fi

echo "== installed (lowest-versions environment):"
"$VENV/bin/python" - <<'EOF'
from importlib.metadata import version
print("   " + ", ".join(f"{name} {version(name)}" for name in ("torch", "transformers", "peft", "accelerate", "datasets", "numpy", "safetensors", "tokenizers", "huggingface-hub", "trl")))
EOF
"$VENV/bin/pip" check --disable-pip-version-check || echo "(pip check reported the conflicts above)"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider "$@"
