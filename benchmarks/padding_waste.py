"""How much of a training batch is padding, i.e. the most that packing several pairs into one row could save.

Packing (several [prompt | chosen | rejected] pairs per row under a block mask, no padding) only removes padding
tokens; the tokens of the pairs themselves are computed either way. This counts, on the claim protocols' real
training sets, the share of padding in the micro-batches hafrm trains on: with transformers' length-grouped
sampler (hafrm's default, `group_by_length`) and with plain random batches. No timing: it runs beside anything.

    python benchmarks/padding_waste.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse

import torch
from transformers.trainer_pt_utils import get_length_grouped_indices


def padding_share(lengths: list[int], order: list[int], micro_batch: int) -> float:
    """Padding tokens / all tokens when `order` is cut into micro-batches padded to their longest row."""
    padded = real = 0
    for start in range(0, len(order), micro_batch):
        batch = [lengths[i] for i in order[start : start + micro_batch]]
        padded += max(batch) * len(batch)
        real += sum(batch)
    return 1 - real / padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per optimiser step (the sampler's group)")
    parser.add_argument("--micro-batch-sizes", default="4,8")
    args = parser.parse_args()

    from hafrm.data import PairEncoder
    from hafrm.experiments.curves import claim_split
    from hafrm.io.pretrained import load_tokenizer, resolve_model_path

    encoder = PairEncoder(load_tokenizer(resolve_model_path(None)), args.max_length)
    print("| training set | pairs | sampler | micro-batch | padding share of tokens |")
    print("|---|---|---|---|---|")
    for name in ("beaver-safe", "hh-harmless"):
        lengths = [encoder.encode_pair(p)["length"] for p in claim_split(name, args.data_root)[0]]
        generator = torch.Generator().manual_seed(0)
        orders = {
            "length-grouped (default)": get_length_grouped_indices(lengths, args.batch_size, generator=generator),
            "random": torch.randperm(len(lengths), generator=generator).tolist(),
        }
        for sampler, order in orders.items():
            for micro in map(int, args.micro_batch_sizes.split(",")):
                share = padding_share(lengths, order, micro)
                print(f"| {name} | {len(lengths)} | {sampler} | {micro} | {100 * share:.1f}% |")


if __name__ == "__main__":
    main()
