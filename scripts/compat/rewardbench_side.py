"""The RewardBench side of check_transformers4.sh; runs in .compat/transformers-4.51 (transformers 4.51.0,
rewardbench 0.1.4), never imports hafrm.

Scores local RewardBench rows through RewardBench's own code, as `rewardbench --model DIR --not_quantized
--torch_dtype float32` does for a model it has no special entry for (rewardbench/rewardbench.py), except that
the rows come from a local file instead of the hub:
- the chat template is applied by `rewardbench.utils.prepare_dialogue_from_tokenizer` (what `load_eval_dataset`
  maps over the core set), to the text RewardBench tokenizes;
- the model is loaded by `REWARD_MODEL_CONFIG["default"]["model_builder"]` (`load_model_config`) with the
  non-quantized kwargs (8-bit loading needs CUDA), and scored by its `pipeline_builder` (`RewardBenchPipeline`)
  with the same tokenizer settings (left padding, pad fix-ups, no truncation) and pipeline kwargs;
- `RewardBenchPipeline` moves its inputs to "cuda" unconditionally: without a GPU that one call is sent to the
  model's device instead (nothing else is changed).
It also checks that transformers' own `pipeline("text-classification")` with its default `function_to_apply`
returns the raw reward (`problem_type: regression`), and compares everything with `hafrm score`'s rewards.

  python rewardbench_side.py MODEL_DIR REWARD_BENCH_ROWS HAFRM_SCORED.jsonl [--tolerance 1e-4] [--batch-size 8]
Exit status 1 when any row differs by more than the tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys

import rewardbench
import torch
import transformers
from datasets import Dataset
from rewardbench.utils import check_tokenizer_chat_template, load_model_config, prepare_dialogue_from_tokenizer
from transformers import AutoTokenizer, BatchEncoding, pipeline


def cuda_to_model_device() -> None:
    """RewardBenchPipeline calls `.to("cuda")` on its tokenizer output; on a machine without CUDA, stay on CPU."""
    if torch.cuda.is_available():
        return
    original = BatchEncoding.to

    def to(self, device, *args, **kwargs):
        return original(self, "cpu" if str(device).startswith("cuda") else device, *args, **kwargs)

    BatchEncoding.to = to


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("rows")
    parser.add_argument("hafrm_scores")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=8)  # rewardbench's default
    args = parser.parse_args()
    print(f"transformers {transformers.__version__}, rewardbench {rewardbench.__version__}, torch {torch.__version__}")

    # --- as rewardbench.rewardbench(): tokenizer, then the dataset formatted with its chat template
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    if not check_tokenizer_chat_template(tokenizer):
        print("the tokenizer has no chat template: RewardBench would need a FastChat template; not checked here")
        return 1
    raw = [json.loads(line) for line in open(args.rows, encoding="utf-8") if line.strip()]
    dataset = Dataset.from_list(raw).map(
        prepare_dialogue_from_tokenizer, fn_kwargs={"tokenizer": tokenizer}, load_from_cache_file=False
    )

    # --- model and pipeline: the "default" entry, non-quantized branch
    config = load_model_config(args.model_dir)
    assert config is rewardbench.REWARD_MODEL_CONFIG["default"], "expected RewardBench's default entry"
    print(
        f"RewardBench config: model_builder={config['model_builder'].__qualname__}, "
        f"pipeline_builder={config['pipeline_builder'].__name__} "
        f"(quantized={config['quantized']} -> run as --not_quantized, float32)"
    )
    tokenizer.padding_side = "left"
    model = config["model_builder"](args.model_dir, device_map="auto", torch_dtype=torch.float32)
    reward_pipe = config["pipeline_builder"]("text-classification", model=model, tokenizer=tokenizer)
    if reward_pipe.tokenizer.pad_token_id is None:
        reward_pipe.model.config.pad_token_id = reward_pipe.tokenizer.eos_token_id
        reward_pipe.tokenizer.pad_token_id = reward_pipe.tokenizer.eos_token_id
    if reward_pipe.model.config.pad_token_id is None:
        reward_pipe.model.config.pad_token_id = reward_pipe.tokenizer.pad_token_id
    kwargs = {
        "batch_size": args.batch_size,
        "truncation": False,
        "padding": True,
        "max_length": 512,
        "function_to_apply": "none",
        "return_token_type_ids": False,
    }
    cuda_to_model_device()

    scores = {}
    for start in range(0, len(dataset), args.batch_size):
        batch = dataset[start : start + args.batch_size]
        for side in ("chosen", "rejected"):
            logits = reward_pipe(batch[f"text_{side}"], **kwargs)
            for row_id, value in zip(batch["id"], logits.float().cpu().numpy().tolist()):
                scores[(row_id, side)] = value[0] if isinstance(value, list) else value

    # --- transformers' own text-classification pipeline, default function_to_apply, one text at a time
    plain = pipeline("text-classification", model=model, tokenizer=tokenizer)
    first = dataset[0]
    plain_score = plain(first["text_chosen"])[0]["score"]
    plain_diff = abs(plain_score - scores[(first["id"], "chosen")])
    print(
        f"pipeline('text-classification') default function_to_apply on row {first['id']} chosen: {plain_score:.6f} "
        f"vs RewardBench {scores[(first['id'], 'chosen')]:.6f} (|diff| {plain_diff:.2e})"
    )

    # --- compare with hafrm score
    hafrm = {}
    for line in open(args.hafrm_scores, encoding="utf-8"):
        if line.strip():
            row = json.loads(line)
            hafrm[(row["id"], row["side"])] = row["reward"]
    if set(hafrm) != set(scores):
        print(f"row sets differ: {len(hafrm)} scored by hafrm, {len(scores)} by RewardBench")
        return 1
    worst_rows = []
    print(
        f"{'id':>6} {'chosen hafrm':>13} {'chosen rb':>13} "
        f"{'rejected hafrm':>15} {'rejected rb':>13} {'max |diff|':>11}"
    )
    for row in raw:
        key_c, key_r = (row["id"], "chosen"), (row["id"], "rejected")
        diff = max(abs(hafrm[key_c] - scores[key_c]), abs(hafrm[key_r] - scores[key_r]))
        worst_rows.append((diff, row["id"]))
        flag = "  <-- over tolerance" if diff > args.tolerance else ""
        print(
            f"{row['id']:>6} {hafrm[key_c]:>13.6f} {scores[key_c]:>13.6f} "
            f"{hafrm[key_r]:>15.6f} {scores[key_r]:>13.6f} {diff:>11.2e}{flag}"
        )
    worst, worst_id = max(worst_rows)
    over = [row_id for diff, row_id in worst_rows if diff > args.tolerance]
    agree = sum(
        (hafrm[(r["id"], "chosen")] > hafrm[(r["id"], "rejected")])
        == (scores[(r["id"], "chosen")] > scores[(r["id"], "rejected")])
        for r in raw
    )
    print(
        f"rows: {len(raw)} ({2 * len(raw)} texts); max |hafrm score - RewardBench 0.1.4| = {worst:.3e} "
        f"(row {worst_id}); "
        f"tolerance {args.tolerance:g}; "
        f"over tolerance: {len(over)} {over}; same preference in {agree}/{len(raw)} rows"
    )
    failed = bool(over) or plain_diff > args.tolerance
    print("FAILED" if failed else "OK: transformers 4.51 + RewardBench 0.1.4 read the export as hafrm does")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
