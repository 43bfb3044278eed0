"""Scoring throughput: hafrm's RewardScorer (length-sorted batches) against a transformers text-classification pipeline.

Both score the same formatted conversations with the same saved reward model and batch size.

    python benchmarks/score_throughput.py --model-dir outputs/hafrm --pairs 128 --batch-size 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, help="a hafrm output folder")
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from transformers import pipeline

    from hafrm.data import load_pairs
    from hafrm.eval.scoring import RewardScorer
    from hafrm.io.defaults import DEFAULT_EVAL_DATA

    torch.set_num_threads(2)
    pairs, _ = load_pairs(str(DEFAULT_EVAL_DATA), limit=args.pairs)
    scorer = RewardScorer(args.model_dir, max_length=args.max_length, device="cpu")
    sequences = [scorer.encode(p["prompt"], p["chosen"]) for p in pairs]
    texts = [scorer.tokenizer.decode(s) for s in sequences]
    classifier = pipeline(
        "text-classification", model=scorer.model, tokenizer=scorer.tokenizer, device="cpu", function_to_apply="none"
    )

    def run_hafrm():
        return scorer.score_ids(sequences, args.batch_size)

    def run_pipeline():
        return [
            out["score"]
            for out in classifier(
                texts, batch_size=args.batch_size, truncation=True, max_length=args.max_length, add_special_tokens=False
            )
        ]

    timings = {"hafrm score": [], "transformers pipeline": []}
    for _ in range(args.rounds):  # interleaved
        for name, function in (("hafrm score", run_hafrm), ("transformers pipeline", run_pipeline)):
            start = time.perf_counter()
            function()
            timings[name].append(len(sequences) / (time.perf_counter() - start))
    ours, theirs = run_hafrm(), run_pipeline()
    agreement = max(abs(a - b) for a, b in zip(ours, theirs))
    print(f"{len(sequences)} sequences, batch {args.batch_size}, {args.rounds} interleaved rounds, fp32 CPU, 2 threads")
    print("| scorer | sequences/s (median) | all rounds |\n|---|---|---|")
    for name, values in timings.items():
        print(f"| {name} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    ratio = statistics.median(timings["hafrm score"]) / statistics.median(timings["transformers pipeline"])
    print(f"\nratio hafrm / pipeline: {ratio:.2f}x; largest reward difference between the two: {agreement:.2e}")


if __name__ == "__main__":
    main()
