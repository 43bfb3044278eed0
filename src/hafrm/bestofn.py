"""Best-of-N selection (the paper's Table 4): sample N responses, pick by a reward model, check against a judge.

top-k recall = share of prompts whose reward-model pick is among the judge's k best of the N, with its 95% Wilson
interval; every selector after the first is also compared with the first on the same prompts (paired bootstrap
interval of the recall difference, exact McNemar p), as the accuracy tables compare each head with the baseline's.
The judge is any callable (prompts, responses) -> scores: a stronger reward model stands in for GPT-4 offline.
On the command line (`hafrm best-of-n`) selectors and the judge are given as MODEL[@HEAD]: a hafrm output
folder scored by its reward head, implicit DPO reward or both combined, or any sequence-classification
reward model (folder or hub name) scored by its head.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from hafrm.metrics import accuracy_interval, discordant_counts, mcnemar_p, paired_bootstrap_interval

Scorer = Callable[[list, list[str]], list[float]]
RECALL_KS = (1, 2)  # top-k recalls reported (the paper's Table 4: top-1 and top-2)


@torch.no_grad()
def sample_responses(
    policy, tokenizer, prompts: Sequence, n: int, max_new_tokens: int = 64, temperature: float = 1.0, seed: int = 0
) -> list[list[str]]:
    """N sampled responses per prompt from a causal LM (HAF's own policy/ or any other)."""
    from hafrm.data.encoding import PairEncoder
    from hafrm.data.formats import as_messages

    torch.manual_seed(seed)
    encoder = PairEncoder(tokenizer)
    device = next(policy.parameters()).device
    responses = []
    for prompt in prompts:
        prompt_ids = encoder.tokenize(encoder.prompt_text(as_messages(prompt, "prompt")))
        inputs = {
            "input_ids": torch.tensor([prompt_ids], device=device),
            "attention_mask": torch.ones(1, len(prompt_ids), dtype=torch.long, device=device),
        }
        output = policy.generate(
            **inputs,
            do_sample=True,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            num_return_sequences=n,
            pad_token_id=tokenizer.pad_token_id,
        )
        responses.append(tokenizer.batch_decode(output[:, len(prompt_ids) :], skip_special_tokens=True))
    return responses


def top_k_hits(
    selector_scores: np.ndarray, judge_scores: np.ndarray, ks: Sequence[int] = RECALL_KS
) -> dict[str, np.ndarray]:
    """Scores are (prompts, N). Per prompt and k: whether the selector's best candidate is among the judge's k best."""
    selector_scores, judge_scores = np.asarray(selector_scores), np.asarray(judge_scores)
    picks = selector_scores.argmax(axis=1)
    judge_rank = np.argsort(-judge_scores, axis=1, kind="stable")
    return {f"top{k}_recall": (judge_rank[:, :k] == picks[:, None]).any(axis=1) for k in ks}


def top_k_recall(
    selector_scores: np.ndarray, judge_scores: np.ndarray, ks: Sequence[int] = RECALL_KS
) -> dict[str, float]:
    """Recall@k: the share of prompts whose selector pick is among the judge's k best."""
    return {name: float(hits.mean()) for name, hits in top_k_hits(selector_scores, judge_scores, ks).items()}


def candidate_scores(scorer: Scorer, prompts: Sequence, candidates: list[list[str]]) -> np.ndarray:
    """(prompts, N) scores of every candidate, scored in one call."""
    n = len(candidates[0])
    if any(len(group) != n for group in candidates):
        raise ValueError("every prompt needs the same number of candidates")
    flat_prompts = [p for p, group in zip(prompts, candidates) for _ in group]
    flat_responses = [r for group in candidates for r in group]
    return np.asarray(scorer(flat_prompts, flat_responses), dtype=float).reshape(-1, n)


def compare_selectors(
    selector_scores: dict[str, np.ndarray], judge_scores: np.ndarray, ks: Sequence[int] = RECALL_KS
) -> dict[str, dict]:
    """Per selector, recall@k with its 95% Wilson interval; each selector after the first also against the first on
    the same prompts: the recall difference with a paired bootstrap 95% interval, the prompts only one of the two
    gets right, and the exact McNemar p."""
    hits = {spec: top_k_hits(scores, judge_scores, ks) for spec, scores in selector_scores.items()}
    reference = next(iter(hits))
    summary = {}
    for spec, spec_hits in hits.items():
        entry: dict = {}
        for name, hit in spec_hits.items():
            recall, low, high = accuracy_interval(hit)
            entry[name] = recall
            entry[f"{name}_interval"] = [low, high]
            if spec != reference:
                difference, low, high = paired_bootstrap_interval(hit, hits[reference][name])
                better, worse = discordant_counts(hit, hits[reference][name])
                entry[f"{name}_minus_reference"] = {
                    "difference": difference,
                    "interval": [low, high],
                    "only_this": better,
                    "only_reference": worse,
                    "mcnemar_p": mcnemar_p(better, worse),
                }
        summary[spec] = {**({"reference": reference} if spec != reference else {}), **entry}
    return summary


def scorer_from_spec(spec: str, max_length: int = 512, batch_size: int = 8, loaded: dict | None = None) -> Scorer:
    """MODEL[@HEAD] as a Scorer. HEAD (reward | implicit | combined) needs a hafrm output folder.

    loaded: models already loaded in this run, by folder (each hafrm folder is loaded once, however many of its heads
    are asked for); a plain dict the caller drops when done, so models are not kept alive for the whole process.
    """
    from hafrm.evaluation import load_trained, score_responses
    from hafrm.model import METADATA_FILE
    from hafrm.scores import check_head
    from hafrm.scoring import RewardScorer

    model, _, head = spec.rpartition("@") if "@" in spec else (spec, "", "reward")
    check_head(head)
    hybrid = (Path(model) / METADATA_FILE).exists()
    if not hybrid and head != "reward":
        raise ValueError(
            f"{spec}: only a hafrm output folder has a {head} score; other reward models have only 'reward'"
        )
    loaded = {} if loaded is None else loaded
    if model not in loaded:
        loaded[model] = load_trained(model) if hybrid else RewardScorer(model, max_length=max_length)
    if hybrid:
        return lambda prompts, responses: score_responses(
            loaded[model], prompts, responses, head, max_length, batch_size
        ).tolist()
    return lambda prompts, responses: loaded[model].score(prompts, responses, batch_size)


def distinct_prompts(pairs: list[dict], limit: int) -> list:
    """The first `limit` distinct prompts of preference pairs (several pairs often share one)."""
    return list({json.dumps(p["prompt"]): p["prompt"] for p in pairs}.values())[:limit]


def run_best_of_n(
    prompts: list,
    policy: str | None,
    selectors: list[str],
    judge: str,
    n: int = 4,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    max_length: int = 512,
    batch_size: int = 8,
) -> tuple[dict, list[list[str]], dict[str, np.ndarray]]:
    """Sample n responses per prompt from `policy` (a causal LM, or a hafrm output folder's own policy head; None: the
    embedded model), pick one with each selector and score the picks against the judge. Returns the results (recall
    per selector with its interval, each selector after the first against the first; chance alongside), the sampled
    candidates, and every candidate's score by the judge and each selector."""
    from hafrm.export import POLICY_DIR
    from hafrm.pretrained import load_causal_lm, load_tokenizer, resolve_dtype, resolve_model_path

    policy_path = resolve_model_path(policy)
    if (Path(policy_path) / POLICY_DIR).is_dir():
        policy_path = str(Path(policy_path) / POLICY_DIR)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sampler, tokenizer = (
        load_causal_lm(policy_path, resolve_dtype("auto")).to(device).eval(),
        load_tokenizer(policy_path),
    )
    candidates = sample_responses(sampler, tokenizer, prompts, n, max_new_tokens, temperature, seed)
    del sampler
    loaded: dict = {}
    scores = {  # (prompts, n) per distinct MODEL[@HEAD], the judge's first; each model loaded once
        spec: candidate_scores(scorer_from_spec(spec, max_length, batch_size, loaded), prompts, candidates)
        for spec in dict.fromkeys([judge, *selectors])
    }
    results = {
        "policy": policy_path,
        "judge": judge,
        "prompts": len(prompts),
        "n": n,
        "chance": {f"top{k}_recall": k / n for k in RECALL_KS},
        "selectors": compare_selectors({spec: scores[spec] for spec in selectors}, scores[judge]),
    }
    return results, candidates, scores
