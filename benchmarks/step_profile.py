"""Where a hafrm training step's time goes on this CPU, and how fast the model's own matrix products can run here.

train_throughput.py reports achieved FLOP/s against a 2048 x 2048 sgemm. This says why the share stops where it
does, from two measurements, one process each, nothing else running:

1. A profile of steps 2..N of `hafrm train` (torch.profiler, CPU, FLOPs of every matrix product recorded), its
   self time split into matrix products (mm, addmm, bmm), attention kernels (SDPA forward and backward), the
   optimizer step (every op inside `Optimizer.step`) and everything else (norms, activations, rotary, softmax, copies,
   indexing, autograd glue, gradient clipping), with the GFLOP/s the matrix products reached inside the step.
2. The same products alone: every linear layer of one transformer layer and the LM head, at the step's token
   count, forward and both backward products (dX and dW), timed in a loop: the ceiling of each shape here.

    python benchmarks/step_profile.py --data hh-harmless --runs haf,baseline --steps 4 --batch-size 8
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

from train_throughput import add_batch_options, benchmark_pairs, matmul_peak_gflops, run_hafrm, token_counts

MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation"}


def category(event) -> str:
    """The part of a step a profiled op belongs to: its own name, or the optimizer step it runs inside."""
    if event.name in MATMUL_OPS:
        return "matrix products"
    if "scaled_dot_product" in event.name or "flash_attention" in event.name:
        return "attention kernels"
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer.step"):
            return "optimizer step"
        parent = parent.cpu_parent
    return "other"


def profiler_callback(profile):
    from transformers import TrainerCallback

    class ProfileAfterFirstStep(TrainerCallback):
        """Profiles from the end of the first optimisation step (warm-up) to the end of the last."""

        def __init__(self):
            self.seconds = None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                profile.start()
                self.start = time.perf_counter()
            elif state.global_step == state.max_steps:
                profile.stop()
                self.seconds = time.perf_counter() - self.start

    return ProfileAfterFirstStep()


def profile_child(args) -> None:
    """One profiled training run; prints its markdown section."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from hafrm.io.defaults import default_model_path
    from hafrm.io.pretrained import load_tokenizer

    torch.set_num_threads(args.threads)
    model_path = str(default_model_path())
    pairs, _ = benchmark_pairs(args, load_tokenizer(model_path))
    profiler = profile(activities=[ProfilerActivity.CPU], with_flops=True)
    callback = profiler_callback(profiler)
    method, _, variant = args.run.partition("-")
    with tempfile.TemporaryDirectory() as output:
        run_hafrm(method, variant, args, pairs, model_path, output, callback)
    seconds, flops, calls = defaultdict(float), defaultdict(float), defaultdict(int)
    others = defaultdict(float)
    for event in profiler.events():
        kind = category(event)
        seconds[kind] += event.self_cpu_time_total / 1e6
        flops[kind] += event.flops or 0
        calls[kind] += 1
        if kind == "other":
            others[event.name] += event.self_cpu_time_total / 1e6
    profiled = sum(seconds.values())
    steps = args.steps - 1
    lines = [
        f"### hafrm {args.run}: {steps} profiled steps of {args.batch_size} pairs, "
        f"{callback.seconds / steps:.2f} s per step (wall, profiler on)",
        "",
        "| part | self s per step | share | calls per step | GFLOP/s inside |",
        "|---|---|---|---|---|",
    ]
    for kind in ("matrix products", "attention kernels", "optimizer step", "other"):
        rate = f"{flops[kind] / seconds[kind] / 1e9:.1f}" if kind == "matrix products" and seconds[kind] else ""
        lines.append(
            f"| {kind} | {seconds[kind] / steps:.2f} | {100 * seconds[kind] / profiled:.0f}% | "
            f"{calls[kind] // steps} | {rate} |"
        )
    top = sorted(others.items(), key=lambda item: -item[1])[:8]
    lines += ["", "Largest of 'other': " + ", ".join(f"{op} {100 * s / profiled:.1f}%" for op, s in top), ""]
    print("\n".join(lines), flush=True)


def best_gflops(a, b, seconds: float = 0.3, blocks: int = 3) -> float:
    """GFLOP/s of a @ b: the best of `blocks` timed blocks of repeated products, each at least `seconds` long."""
    flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
    start, repeats = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:  # warm-up, and how many products fill a block
        a @ b
        repeats += 1
    best = 0.0
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, flops * repeats / (time.perf_counter() - start) / 1e9)
    return best


def shape_ceilings(tokens: int, response_tokens: int, threads: int) -> str:
    """GFLOP/s of each linear layer's three products at `tokens` rows (x: tokens x in, w: out x in); the LM head's
    at `response_tokens` rows."""
    import torch
    from transformers import AutoConfig

    from hafrm.io.defaults import default_model_path

    torch.set_num_threads(threads)
    config = AutoConfig.from_pretrained(default_model_path())
    hidden, inner, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
    kv = config.num_key_value_heads * hidden // heads
    shapes = {"q, o": (hidden, hidden), "k, v": (hidden, kv), "gate, up": (hidden, inner), "down": (inner, hidden)}
    shapes["LM head"] = (hidden, config.vocab_size)
    lines = [
        f"Each product alone at a batch's mean token count ({tokens} rows; the LM head {response_tokens}, the "
        f"response tokens), {threads} threads, GFLOP/s (best of three blocks of at least 0.3 s):",
        "",
        "| layer (in -> out) | forward x w^T | backward dX = dY w | backward dW = dY^T x |",
        "|---|---|---|---|",
    ]
    for name, (fan_in, fan_out) in shapes.items():
        rows = response_tokens if name == "LM head" else tokens
        x, w, dy = torch.randn(rows, fan_in), torch.randn(fan_out, fan_in), torch.randn(rows, fan_out)
        rates = [best_gflops(a, b) for a, b in ((x, w.T), (dy, w), (dy.T, x))]  # forward, dX, dW
        lines.append(f"| {name} ({fan_in} -> {fan_out}) | " + " | ".join(f"{r:.0f}" for r in rates) + " |")
    return "\n".join(lines) + "\n"


def step_tokens(args) -> tuple[int, int]:
    """Mean tokens of one batch of the benchmark pairs (shared-prompt rows, padding not counted), and of their
    responses, which the LM head runs on."""
    from hafrm.io.defaults import default_model_path
    from hafrm.io.pretrained import load_tokenizer

    tokenizer = load_tokenizer(str(default_model_path()))
    pairs, _ = benchmark_pairs(args, tokenizer)
    tokens = token_counts(pairs, tokenizer, args.max_length)
    return round(tokens["shared"] * args.batch_size), round(tokens["responses"] * args.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--runs", default="haf,baseline", help="hafrm runs as in train_throughput, without 'hafrm-'")
    parser.add_argument("--data", choices=("hh-harmless", "pku-saferlhf"), default="hh-harmless")
    parser.add_argument("--steps", type=int, default=4, help="optimisation steps; all but the first are profiled")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--freeze-layers", type=int, default=22, help="for a -frozen run")
    add_batch_options(parser)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is a warm-up and is not profiled")
    args.gradient_checkpointing = False
    if args.child:
        return profile_child(args)
    print(f"Matmul peak (2048 x 2048 sgemm): {matmul_peak_gflops(args.threads):.1f} GFLOP/s\n", flush=True)
    for run in args.runs.split(","):
        common = ["--data", args.data, "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
        common += ["--max-length", str(args.max_length), "--threads", str(args.threads)]
        common += ["--freeze-layers", str(args.freeze_layers), "--batches", args.batches, "--pool", str(args.pool)]
        subprocess.run([sys.executable, __file__, "--child", "--run", run, *common], check=True)
    print(shape_ceilings(*step_tokens(args), args.threads))


if __name__ == "__main__":
    main()
