#!/usr/bin/env bash
# Copies what a claim report needs from its finished runs (done.json, lengths.npz, the per-pair eval scores), not
# the models and checkpoints, into a folder that can be committed; `hafrm report --merge DEST` reads it back.
# usage: scripts/keep_run_scores.sh REPORT_DIR DEST
set -euo pipefail
source_dir=$1/runs
dest=$2/runs
for done in "$source_dir"/*/done.json; do
  [ -e "$done" ] || continue
  run=$(basename "$(dirname "$done")")
  mkdir -p "$dest/$run/model/eval-scores"
  cp "$done" "$source_dir/$run/lengths.npz" "$dest/$run/"
  cp "$source_dir/$run"/model/eval-scores/*.npz "$dest/$run/model/eval-scores/"
  echo "kept $run"
done
