"""The paper's RLHF experiment (section 4.2.2, Figure 5, Safety) at CPU scale: the data, split three ways by prompt.

Two policies are trained by RLHF from the same start, one against the haf reward model and one against the
Bradley-Terry baseline, and compared by a judge that is neither policy's reward model. The Beaver Safe pairs (the
5,135-pair PKU-SafeRLHF safe-vs-unsafe file) are split by question, so no part shares a question with another:

  heldout   the claim runs' test part (claim_split, split seed 0): prompts for evaluating the policies, and the test
            pairs of both reward models and the judge
  judge     half of the claim runs' training part, by whole prompt groups: the judge's training pairs
  rm        the other half: the two reward models' training pairs, whose prompts are also the RLHF training prompts

docs/report/rlhf-safety/README.md states the sizes and the plan.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from hafrm.data.splits import prompt_key, split_by_prompt
from hafrm.experiments.curves import SPLIT_SEED, claim_split

PARTS = ("rm", "judge", "heldout")
DATASET = "beaver-safe"


def safety_split(data_root: str) -> dict[str, list[dict]]:
    """The three prompt-disjoint parts of Beaver Safe (see the module docstring), in a fixed order."""
    train, heldout = claim_split(DATASET, data_root)
    rm, judge = split_by_prompt(train, len(train) // 2, SPLIT_SEED + 1)
    return {"rm": rm, "judge": judge, "heldout": heldout}


def write_split(data_root: str, folder: str | Path) -> dict[str, dict]:
    """Write each part as `<folder>/<part>_pairs.jsonl.gz` (hafrm's canonical rows) and return each part's pair and
    prompt counts; the parts are checked to share no question."""
    parts = safety_split(data_root)
    prompts = {name: {prompt_key(p) for p in pairs} for name, pairs in parts.items()}
    for i, first in enumerate(PARTS):
        for second in PARTS[i + 1 :]:
            if prompts[first] & prompts[second]:
                raise AssertionError(f"parts {first} and {second} share questions")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, pairs in parts.items():
        with gzip.open(folder / f"{name}_pairs.jsonl.gz", "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs)
    return {name: {"pairs": len(pairs), "prompts": len(prompts[name])} for name, pairs in parts.items()}
