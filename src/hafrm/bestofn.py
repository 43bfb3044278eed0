"""Best-of-N selection (the paper's Table 4): sample N responses, pick by a reward model, check against a judge.

top-k recall = share of prompts whose reward-model pick is among the judge's k best of the N.
The judge is any callable (prompts, responses) -> scores: a stronger reward model stands in for GPT-4 offline.
On the command line (`hafrm best-of-n`) selectors and the judge are given as MODEL[@HEAD]: a hafrm output
folder scored by its reward head, implicit DPO reward or both combined, or any sequence-classification
reward model (folder or hub name) scored by its head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

import numpy as np
import torch

Scorer = Callable[[list, list[str]], list[float]]


@torch.no_grad()
def sample_responses(policy, tokenizer, prompts: Sequence, n: int, max_new_tokens: int = 64, temperature: float = 1.0, seed: int = 0) -> list[list[str]]:
    """N sampled responses per prompt from a causal LM (HAF's own policy/ or any other)."""
    from hafrm.data.encoding import PairEncoder
    from hafrm.data.formats import as_messages

    torch.manual_seed(seed)
    encoder = PairEncoder(tokenizer)
    device = next(policy.parameters()).device
    responses = []
    for prompt in prompts:
        prompt_ids = encoder.tokenize(encoder.prompt_text(as_messages(prompt, "prompt")))
        inputs = {"input_ids": torch.tensor([prompt_ids], device=device), "attention_mask": torch.ones(1, len(prompt_ids), dtype=torch.long, device=device)}
        output = policy.generate(**inputs, do_sample=True, temperature=temperature, max_new_tokens=max_new_tokens,
                                 num_return_sequences=n, pad_token_id=tokenizer.pad_token_id)
        responses.append(tokenizer.batch_decode(output[:, len(prompt_ids) :], skip_special_tokens=True))
    return responses


def top_k_recall(selector_scores: np.ndarray, judge_scores: np.ndarray, ks: Sequence[int] = (1, 2)) -> dict[str, float]:
    """Scores are (prompts, N). Recall@k: the selector's best candidate is among the judge's k best."""
    selector_scores, judge_scores = np.asarray(selector_scores), np.asarray(judge_scores)
    picks = selector_scores.argmax(axis=1)
    judge_rank = np.argsort(-judge_scores, axis=1, kind="stable")
    return {f"top{k}_recall": float(np.mean([pick in judge_rank[i, :k] for i, pick in enumerate(picks)])) for k in ks}


def best_of_n(prompts: Sequence, candidates: list[list[str]], selector: Scorer, judge: Scorer, ks: Sequence[int] = (1, 2)) -> dict:
    """Score every candidate with the selector and the judge; return recall@k and each prompt's pick."""
    flat_prompts = [p for p, group in zip(prompts, candidates) for _ in group]
    flat_responses = [r for group in candidates for r in group]
    n = len(candidates[0])
    if any(len(group) != n for group in candidates):
        raise ValueError("every prompt needs the same number of candidates")
    selector_scores = np.asarray(selector(flat_prompts, flat_responses)).reshape(-1, n)
    judge_scores = np.asarray(judge(flat_prompts, flat_responses)).reshape(-1, n)
    return {**top_k_recall(selector_scores, judge_scores, ks), "picks": selector_scores.argmax(axis=1).tolist()}


def scorer_from_spec(spec: str, max_length: int = 512, batch_size: int = 8) -> Scorer:
    """MODEL[@HEAD] as a Scorer. HEAD (reward | implicit | combined) needs a hafrm output folder."""
    from hafrm.evaluation import score_responses
    from hafrm.model import METADATA_FILE
    from hafrm.scores import check_head

    model, _, head = spec.rpartition("@") if "@" in spec else (spec, "", "reward")
    check_head(head)
    if (Path(model) / METADATA_FILE).exists():
        loaded = _load_trained(model)
        return lambda prompts, responses: score_responses(loaded, prompts, responses, head, max_length, batch_size).tolist()
    if head != "reward":
        raise ValueError(f"{spec}: only a hafrm output folder has a {head} score; other reward models have only 'reward'")
    scorer = _reward_scorer(model, max_length)
    return lambda prompts, responses: scorer.score(prompts, responses, batch_size)


@cache
def _load_trained(model_dir: str):
    """Each hafrm folder is loaded once, however many of its heads are asked for."""
    from hafrm.evaluation import load_trained

    return load_trained(model_dir)


@cache
def _reward_scorer(model: str, max_length: int):
    from hafrm.scoring import RewardScorer

    return RewardScorer(model, max_length=max_length)
