"""Do torch.compile or flex attention speed up a hafrm training step on this CPU? Best case for both: the same
batch (same shapes) every step, so nothing recompiles; the first (compiling) step is reported apart. Runs in turn:
eager with SDPA (the default), eager with flex attention (transformers compiles the flex kernel itself), and the
backbone under torch.compile with SDPA.

    python benchmarks/compile_probe.py --steps 4
"""

from __future__ import annotations

import argparse
import time

import torch


def step_seconds(model, objective, batch, steps: int) -> list[float]:
    from hafrm.scores import forward_batch

    times = []
    for _ in range(steps):
        start = time.perf_counter()
        outputs, reference = forward_batch(model, objective, batch, with_logps=True)
        loss, _ = objective(outputs.rewards, outputs.logps, outputs.token_counts, reference)
        loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    from hafrm.config import TrainConfig
    from hafrm.data import PairCollator, PairEncoder, load_pairs
    from hafrm.defaults import DEFAULT_TRAIN_DATA, default_model_path
    from hafrm.model import HybridRewardModel
    from hafrm.pretrained import load_causal_lm, load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(2)
    path = str(default_model_path())
    tokenizer = load_tokenizer(path)
    pairs, _ = load_pairs(str(DEFAULT_TRAIN_DATA), limit=args.batch_size)
    encoder = PairEncoder(tokenizer, args.max_length)
    batch = PairCollator(tokenizer.pad_token_id)([encoder.encode_pair(p) for p in pairs])
    objective = TrainConfig(method="haf").objective()
    model = HybridRewardModel.from_causal_lm(load_causal_lm(path, torch.float32))
    model.disable_dropout()
    batch["reference_logps"] = torch.zeros(2 * args.batch_size)
    medians = {}
    for name, attention, compile_backbone in (
        ("eager, sdpa", "sdpa", False),
        ("eager, flex_attention", "flex_attention", False),
        ("compiled, sdpa", "sdpa", True),
    ):
        model.config._attn_implementation = attention
        if compile_backbone:
            model.backbone.compile(dynamic=False)
        start = time.perf_counter()
        try:
            first = step_seconds(model, objective, batch, 1)[0]
            times = step_seconds(model, objective, batch, args.steps)
        except Exception as error:  # e.g. a kernel without a CPU backward: the other runs still go
            print(f"{name}: failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
            continue
        wall = time.perf_counter() - start
        medians[name] = sorted(times)[len(times) // 2]
        print(f"{name}: first step {first:.1f} s, then s/step {[round(t, 2) for t in times]} (wall {wall:.0f} s)")
    print("median s/step: " + ", ".join(f"{name} {seconds:.2f}" for name, seconds in medians.items()))


if __name__ == "__main__":
    main()
