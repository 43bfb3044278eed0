"""Do torch.compile or flex attention speed up a hafrm training step on this CPU? Best case for both: the same
batch (same shapes) every step, so nothing recompiles; the first (compiling) step is reported apart. Flex
attention is tried once (transformers compiles its kernel itself). Eager and compiled SDPA steps then alternate,
round by round (`torch.compiler.set_stance("force_eager")` runs the compiled backbone eagerly), so that this
machine's drifting speed falls on both alike.

    python benchmarks/compile_probe.py --steps 4
"""

from __future__ import annotations

import argparse
import time

import torch


def step_seconds(model, objective, batch) -> float:
    """Wall time of one haf training step (forward, both losses, backward) on the batch."""
    from hafrm.eval.scores import forward_batch

    start = time.perf_counter()
    outputs, reference = forward_batch(model, objective, batch, with_logps=True)
    loss, _ = objective(outputs.rewards, outputs.logps, outputs.token_counts, reference)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    from hafrm.data import PairCollator, PairEncoder, load_pairs
    from hafrm.io.defaults import DEFAULT_TRAIN_DATA, default_model_path
    from hafrm.io.pretrained import load_causal_lm, load_tokenizer
    from hafrm.model.hybrid import HybridRewardModel
    from hafrm.training.config import TrainConfig

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
    flex_attention_step(model, objective, batch)
    model.config._attn_implementation = "sdpa"
    print(f"eager, sdpa: first step {step_seconds(model, objective, batch):.1f} s")
    model.backbone.compile(dynamic=False)
    print(f"compiled, sdpa: first (compiling) step {step_seconds(model, objective, batch):.1f} s")
    times = {"eager": [], "compiled": []}
    for _ in range(args.steps):
        with torch.compiler.set_stance("force_eager"):
            times["eager"].append(step_seconds(model, objective, batch))
        times["compiled"].append(step_seconds(model, objective, batch))
    medians = {name: sorted(seconds)[len(seconds) // 2] for name, seconds in times.items()}
    for name, seconds in times.items():
        print(f"{name}, sdpa: s/step by round {[round(t, 2) for t in seconds]}, median {medians[name]:.2f}")
    print(f"compiled / eager median step time: {medians['compiled'] / medians['eager']:.3f}")


def flex_attention_step(model, objective, batch) -> None:
    """One step with flex attention, or why it cannot run here (no CPU backward in some torch builds)."""
    from hafrm.io.filechecks import first_line

    model.config._attn_implementation = "flex_attention"
    try:
        print(f"eager, flex_attention: first step {step_seconds(model, objective, batch):.1f} s")
    except Exception as error:
        print(f"eager, flex_attention: failed: {type(error).__name__}: {first_line(error)}")


if __name__ == "__main__":
    main()
