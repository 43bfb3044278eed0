"""Length facts of the local preference sets, for the length-preference question of the claim report: how often the
chosen response is the longer one (a "prefer the shorter answer" rule scores the rest), the median response
lengths in tokens, and how many pairs a max_length cuts (hafrm keeps each response's end, so a cut response loses
its beginning). Data and tokenizer only: no model runs, so it can run beside anything.

    python scripts/length_stats.py --data-root ../shared/data
"""

from __future__ import annotations

import argparse

import numpy as np

from hafrm.data.catalog import load_named
from hafrm.data.encoding import PairEncoder
from hafrm.experiments.curves import claim_split
from hafrm.io.defaults import default_model_path
from hafrm.io.pretrained import load_tokenizer

CUTS = (256, 512, 1024)


def sets(data_root: str) -> dict[str, list[dict]]:
    """The claim protocol's prompt-disjoint train and test parts, and the other local sets the reports test on."""
    named = {}
    for name in ("beaver-safe", "hh-harmless"):
        named[f"{name} train"], named[f"{name} test"] = claim_split(name, data_root)
    for name, split in (("hh-helpful", "test"), ("chatbot-arena", "train"), ("reward-bench", "test")):
        named[f"{name} {split}"] = load_named(name, split, data_root)[0]
    return named


def row(title: str, pairs: list[dict], encoder: PairEncoder) -> str:
    longer = np.mean([len(p["chosen"]) > len(p["rejected"]) for p in pairs])
    prompts, responses = zip(*(encoder.split(p["prompt"], [p["chosen"], p["rejected"]]) for p in pairs))
    chosen, rejected = (np.array([len(r[side]) for r in responses]) for side in (0, 1))
    longest = np.maximum(chosen, rejected) + np.array([len(p) for p in prompts])
    cut = " | ".join(f"{100 * np.mean(longest > limit):.0f}" for limit in CUTS)
    return (
        f"| {title} | {len(pairs)} | {100 * longer:.1f} | {np.median(chosen):.0f} | {np.median(rejected):.0f} | {cut} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="local copies in the layout of ../shared/data")
    args = parser.parse_args()
    encoder = PairEncoder(load_tokenizer(str(default_model_path())), max_length=max(CUTS))
    cuts = " | ".join(f"% cut at {limit}" for limit in CUTS)
    print(f"| set | pairs | % chosen longer (chars) | median chosen tokens | median rejected tokens | {cuts} |")
    print("|---|---|---|---|---|" + "---|" * len(CUTS))
    for title, pairs in sets(args.data_root).items():
        print(row(title, pairs, encoder))


if __name__ == "__main__":
    main()
