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

import numpy as np

from hafrm.data.splits import prompt_key, split_by_prompt
from hafrm.eval.metrics import paired_bootstrap_interval
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


# ---------------------------------------------------------------- the judged comparison, from the kept files

POLICIES = ("haf", "baseline")  # each trained against the reward model of the same name
START = "start"  # the policy both start from, evaluated once at step 0
REWARD_COLUMNS = {"judge_reward": "judge", "own_rm_reward": "own", "other_rm_reward": "other"}


def judge_rows(evaluations: dict[int, list[dict]], judge: str, reward_models: dict[str, str]) -> list[dict]:
    """One row per (step, prompt, policy) from `hafrm policy-eval` rows of each step: the judge's, the policy's own
    reward model's and the other one's scores, completion tokens and the k1 KL, each the mean over the prompt's
    samples. At step 0 the start policy's completions stand for both policies. reward_models maps a policy to the
    MODEL[@HEAD] it was trained against, as the rows name it."""
    grouped: dict[tuple[int, int, str], list[dict]] = {}
    for step, rows in sorted(evaluations.items()):
        for row in rows:
            policies = POLICIES if row["policy"] == START else (row["policy"],)
            for policy in policies:
                grouped.setdefault((step, row["prompt_id"], policy), []).append(row)
    result = []
    for (step, prompt_id, policy), rows in sorted(grouped.items()):
        other = next(p for p in POLICIES if p != policy)
        result.append(
            {
                "step": step,
                "prompt_id": prompt_id,
                "policy": policy,
                "judge_reward": _mean_of(r["scores"][judge] for r in rows),
                "own_rm_reward": _mean_of(r["scores"][reward_models[policy]] for r in rows),
                "other_rm_reward": _mean_of(r["scores"][reward_models[other]] for r in rows),
                "completion_tokens": _mean_of(r["completion_tokens"] for r in rows),
                "kl": _mean_of(r["logprob"] - r["start_logprob"] for r in rows),
                "samples": len(rows),
            }
        )
    return result


def _mean_of(values) -> float:
    return float(np.mean(list(values)))


def win_rate(rows: list[dict], step: int, seed: int = 0) -> dict:
    """The judge's win rate of the haf-trained policy over the baseline-trained one at `step`, paired by prompt (a tie
    counts one half), with a 95% bootstrap interval over prompts, and the effect sizes that interval rules out: an
    edge (|win rate - 0.5|) above `edge_ruled_out`, and no edge at all where `no_edge_ruled_out`."""
    by_prompt: dict[int, dict[str, float]] = {}
    for row in rows:
        if row["step"] == step:
            by_prompt.setdefault(row["prompt_id"], {})[row["policy"]] = row["judge_reward"]
    outcomes = np.array(
        [0.5 if p["haf"] == p["baseline"] else float(p["haf"] > p["baseline"]) for p in by_prompt.values()]
    )
    rate, low, high = paired_bootstrap_interval(outcomes, np.zeros_like(outcomes), resamples=10_000, seed=seed)
    return {
        "step": step,
        "prompts": len(outcomes),
        "win_rate": rate,
        "interval": [low, high],
        "edge_ruled_out": max(abs(low - 0.5), abs(high - 0.5)),
        "no_edge_ruled_out": not low <= 0.5 <= high,
    }


def standardised(rows: list[dict]) -> list[dict]:
    """Per step and policy: the mean of each reward (judge, own, other) standardised against the step-0 completions'
    scores by the same reward model (its mean and std over prompts there), mean completion tokens and mean KL."""
    start = {policy: [r for r in rows if r["step"] == 0 and r["policy"] == policy] for policy in POLICIES}
    reference = {}
    for policy in POLICIES:
        for key in REWARD_COLUMNS:
            values = np.array([r[key] for r in start[policy]])
            reference[policy, key] = (values.mean(), values.std(ddof=1))
    table = []
    for step in sorted({r["step"] for r in rows}):
        for policy in POLICIES:
            own = [r for r in rows if r["step"] == step and r["policy"] == policy]
            entry = {"step": step, "policy": policy, "prompts": len(own)}
            for key, name in REWARD_COLUMNS.items():
                mean, std = reference[policy, key]
                entry[name] = float((np.mean([r[key] for r in own]) - mean) / std)
            entry["completion_tokens"] = float(np.mean([r["completion_tokens"] for r in own]))
            entry["kl"] = float(np.mean([r["kl"] for r in own]))
            table.append(entry)
    return table
