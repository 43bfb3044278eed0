"""The hafrm side of check_transformers4.sh; runs in the project's own environment (transformers 5.x).

hafrm_side.py export OUTPUT_DIR        export the default model (SmolLM2-135M-Instruct) with a fresh, seeded
                                       reward head; reward_model/ is made portable (idempotent if export did)
hafrm_side.py family NAME OUTPUT_DIR   export a tiny random model of one family (hafrm.testing.TINY_FAMILIES,
                                       sliding windows of 24 tokens) with the default tokenizer, the same way;
                                       NAME-base: with that tokenizer's chat template removed (a base model, whose
                                       export carries the HH text format training gives it)
hafrm_side.py rows REWARD_BENCH OUT    RewardBench rows (prompt/chosen/rejected/id) -> one prompt/response
                                       row per (id, side), the input of `hafrm score`
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path


def export(output_dir: Path, family: str | None = None) -> None:
    import torch

    from hafrm.io.defaults import default_model_path
    from hafrm.io.portable import make_portable
    from hafrm.io.pretrained import load_causal_lm, load_tokenizer
    from hafrm.model.hybrid import HybridRewardModel

    path = str(default_model_path())
    tokenizer = load_tokenizer(path)
    if family is None:
        causal_lm = load_causal_lm(path, torch.float32)
    else:
        from hafrm.testing import tiny_family_model

        if family.endswith("-base"):
            tokenizer.chat_template = None
        causal_lm = tiny_family_model(family.removesuffix("-base"), len(tokenizer))
    torch.manual_seed(0)
    # from_causal_lm took the pad id as its second argument before the pad rule moved to one place (issue 10).
    extra = (
        {"pad_token_id": tokenizer.pad_token_id}
        if "pad_token_id" in inspect.signature(HybridRewardModel.from_causal_lm).parameters
        else {}
    )
    model = HybridRewardModel.from_causal_lm(causal_lm, **extra)
    model.export(
        output_dir,
        tokenizer,
        {"base_model": family or "SmolLM2-135M-Instruct (hafrm default)", "note": "fresh reward head, seed 0"},
        save_policy=False,
    )
    if family is not None:
        # transformers 5 loads the tokenizer class of the folder's model type (Qwen2's splits text its own way),
        # which 4.x takes from tokenizer.json: saved as transformers 5 reads it, both read the same tokens
        load_tokenizer(str(output_dir / "reward_model")).save_pretrained(output_dir / "reward_model")
    make_portable(output_dir / "reward_model")


def rows(source: Path, out: Path) -> None:
    lines = []
    for line in source.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            for side in ("chosen", "rejected"):
                lines.append(
                    json.dumps(
                        {"id": row["id"], "side": side, "prompt": row["prompt"], "response": row[side]},
                        ensure_ascii=False,
                    )
                )
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "family":
        export(Path(args[1]), family=args[0])
    else:
        {"export": export, "rows": rows}[command](*map(Path, args))
