"""Best-of-N selection (the paper's Table 4): sample N responses, pick by a reward model, check against a judge.

top-k recall = share of prompts whose reward-model pick is among the judge's k best of the N.
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

Scorer = Callable[[list, list[str]], list[float]]


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


def top_k_recall(selector_scores: np.ndarray, judge_scores: np.ndarray, ks: Sequence[int] = (1, 2)) -> dict[str, float]:
    """Scores are (prompts, N). Recall@k: the selector's best candidate is among the judge's k best."""
    selector_scores, judge_scores = np.asarray(selector_scores), np.asarray(judge_scores)
    picks = selector_scores.argmax(axis=1)
    judge_rank = np.argsort(-judge_scores, axis=1, kind="stable")
    return {f"top{k}_recall": float(np.mean([pick in judge_rank[i, :k] for i, pick in enumerate(picks)])) for k in ks}


def best_of_n(
    prompts: Sequence, candidates: list[list[str]], selector: Scorer, judge: Scorer, ks: Sequence[int] = (1, 2)
) -> dict:
    """Score every candidate with the selector and the judge; return recall@k and each prompt's pick."""
    flat_prompts = [p for p, group in zip(prompts, candidates) for _ in group]
    flat_responses = [r for group in candidates for r in group]
    n = len(candidates[0])
    if any(len(group) != n for group in candidates):
        raise ValueError("every prompt needs the same number of candidates")
    selector_scores = np.asarray(selector(flat_prompts, flat_responses)).reshape(-1, n)
    judge_scores = np.asarray(judge(flat_prompts, flat_responses)).reshape(-1, n)
    return {**top_k_recall(selector_scores, judge_scores, ks), "picks": selector_scores.argmax(axis=1).tolist()}


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
) -> tuple[dict, list[list[str]]]:
    """Sample n responses per prompt from `policy` (a causal LM, or a hafrm output folder's own policy head; None: the
    embedded model), pick one with each selector and score the picks against the judge. Returns the results (recall
    per selector, chance alongside) and the sampled candidates."""
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
    judge_scorer = scorer_from_spec(judge, max_length, batch_size, loaded)
    results = {
        "policy": policy_path,
        "judge": judge,
        "prompts": len(prompts),
        "n": n,
        "chance": {f"top{k}_recall": k / n for k in (1, 2)},
        "selectors": {},
    }
    for spec in selectors:
        outcome = best_of_n(prompts, candidates, scorer_from_spec(spec, max_length, batch_size, loaded), judge_scorer)
        results["selectors"][spec] = {k: v for k, v in outcome.items() if k != "picks"}
    return results, candidates
