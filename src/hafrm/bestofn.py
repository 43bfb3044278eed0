"""Best-of-N selection (the paper's Table 4): sample N responses, pick by a reward model, check against a judge.

top-k recall = share of prompts whose reward-model pick is among the judge's k best of the N.
The judge is any callable (prompts, responses) -> scores: a stronger reward model stands in for GPT-4 offline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
        prompt_text, _ = encoder.texts(as_messages(prompt, "prompt"), "")
        inputs = tokenizer(prompt_text, return_tensors="pt", add_special_tokens=not tokenizer.chat_template).to(device)
        output = policy.generate(**inputs, do_sample=True, temperature=temperature, max_new_tokens=max_new_tokens,
                                 num_return_sequences=n, pad_token_id=tokenizer.pad_token_id)
        responses.append(tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
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
