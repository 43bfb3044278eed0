"""Best-of-N selection (the paper's Table 4): sample N responses, pick by a reward model, check against a judge.

top-k recall = share of prompts whose reward-model pick is among the judge's k best of the N, with its 95% Wilson
interval; every selector after the first is also compared with the first on the same prompts (paired bootstrap
interval of the recall difference, exact McNemar p), as the accuracy tables compare each head with the baseline's.
The judge is given as a selector is; a stronger reward model stands in for GPT-4 offline.
On the command line (`hafrm best-of-n`) selectors and the judge are given as MODEL[@HEAD]: a hafrm output
folder scored by its reward head, implicit DPO reward or both combined, or any sequence-classification
reward model (folder or hub name) scored by its head. A run's `--output` keeps every candidate and each model's
scores of it; given back as `--candidates`, it is scored by new models only, so selectors trained on different days
(whose models need not all exist at once) are compared on the same candidates.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from hafrm.eval.metrics import accuracy_interval, discordant_counts, mcnemar_p, paired_bootstrap_interval
from hafrm.serve.rlhf import Scorer, score_with_models

logger = logging.getLogger(__name__)
RECALL_KS = (1, 2)  # top-k recalls reported (the paper's Table 4: top-1 and top-2)
SAMPLING_SETTINGS = ("policy", "n", "max_new_tokens", "temperature", "seed")  # recorded beside the candidates


@torch.no_grad()
def sample_responses(
    policy, tokenizer, prompts: Sequence, n: int, max_new_tokens: int = 64, temperature: float = 1.0, seed: int = 0
) -> list[list[str]]:
    """N sampled responses per prompt from a causal LM (HAF's own policy/ or any other)."""
    from tqdm.auto import tqdm

    from hafrm.data.encoding import PairEncoder
    from hafrm.data.formats import as_messages

    torch.manual_seed(seed)
    encoder = PairEncoder(tokenizer)
    device = next(policy.parameters()).device
    responses = []
    for prompt in tqdm(prompts, desc="sampling", leave=False):
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


def candidate_scores(scorer: Scorer, prompts: Sequence, candidates: list[list[str]]) -> dict[str, np.ndarray]:
    """(prompts, N) scores of every candidate by each head the scorer gives, scored in one call."""
    n = len(candidates[0])
    if any(len(group) != n for group in candidates):
        raise ValueError("every prompt needs the same number of candidates")
    flat_prompts = [p for p, group in zip(prompts, candidates) for _ in group]
    flat_responses = [r for group in candidates for r in group]
    by_head = scorer(flat_prompts, flat_responses)
    return {head: np.asarray(scores, dtype=float).reshape(-1, n) for head, scores in by_head.items()}


def compare_selectors(
    selector_scores: dict[str, np.ndarray], judge_scores: np.ndarray, ks: Sequence[int] = RECALL_KS
) -> dict[str, dict]:
    """Per selector, recall@k with its 95% Wilson interval; each selector after the first also against the first on
    the same prompts: the recall difference with a paired bootstrap 95% interval, the prompts only one of the two
    gets right, and the exact McNemar p."""
    hits = {spec: top_k_hits(scores, judge_scores, ks) for spec, scores in selector_scores.items()}
    reference = next(iter(hits), None)
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


def distinct_prompts(pairs: list[dict], limit: int) -> list:
    """The first `limit` distinct prompts of preference pairs (several pairs often share one)."""
    return list({json.dumps(p["prompt"]): p["prompt"] for p in pairs}.values())[:limit]


def sample_candidates(
    prompts: list, policy: str | None, n: int, max_new_tokens: int, temperature: float, seed: int
) -> tuple[list[list[str]], dict]:
    """n responses per prompt from `policy` (a causal LM, or a hafrm output folder's own policy head; None: the
    embedded model), and the settings they were sampled with, recorded beside them."""
    from hafrm.io.pretrained import inference_device, load_causal_lm, load_tokenizer, resolve_dtype, resolve_policy_path

    policy_path = resolve_policy_path(policy)
    sampler = load_causal_lm(policy_path, resolve_dtype("auto")).to(inference_device()).eval()
    candidates = sample_responses(sampler, load_tokenizer(policy_path), prompts, n, max_new_tokens, temperature, seed)
    return candidates, dict(zip(SAMPLING_SETTINGS, (policy_path, n, max_new_tokens, temperature, seed)))


def score_candidates(
    prompts: list,
    candidates: list[list[str]],
    specs: Sequence[str],
    saved: dict[str, np.ndarray] | None = None,
    max_length: int = 512,
    batch_size: int = 8,
) -> dict[str, np.ndarray]:
    """(prompts, N) scores of every candidate by each MODEL[@HEAD] (`score_with_models`: each model loaded once).
    Specs already in `saved` (an earlier run's scores of the same candidates) are taken from it and not loaded, so a
    comparison can be built over several days from models that no longer exist together; the result holds `saved`
    and the new scores."""
    saved = saved or {}
    for spec in dict.fromkeys(specs):
        if spec in saved:
            logger.info("%s: scores reused from the candidates file", spec)
    new_specs = [spec for spec in dict.fromkeys(specs) if spec not in saved]
    new = (
        candidate_scores(lambda p, r: score_with_models(new_specs, p, r, max_length, batch_size), prompts, candidates)
        if new_specs
        else {}
    )
    return {**saved, **new}  # new ones in the asked order


def best_of_n_results(
    sampling: dict, prompts: int, selectors: list[str], judge: str | None, scores: dict[str, np.ndarray]
) -> dict:
    """The summary: sampling settings and the models that have scored the candidates; with a judge, also chance
    (k/N) and `compare_selectors` against the judge's scores."""
    results = {**sampling, "prompts": prompts, "scored": list(scores)}
    if judge is None:
        return results
    n = scores[judge].shape[1]
    return {
        **results,
        "judge": judge,
        "chance": {f"top{k}_recall": k / n for k in RECALL_KS},
        "selectors": compare_selectors({spec: scores[spec] for spec in selectors}, scores[judge]),
    }


def samples_record(prompts: list, candidates: list[list[str]], scores: dict[str, np.ndarray]) -> list[dict]:
    """Every prompt with its candidates and each model's score of each: what `--output` keeps and `read_candidates`
    reads back."""
    return [
        {"prompt": prompt, "candidates": group, "scores": {spec: s[i].tolist() for spec, s in scores.items()}}
        for i, (prompt, group) in enumerate(zip(prompts, candidates))
    ]


def read_candidates(path: str | Path) -> tuple[list, list[list[str]], dict[str, np.ndarray], dict]:
    """An earlier `hafrm best-of-n --output`: its prompts, candidates, each MODEL[@HEAD]'s (prompts, N) scores and
    the sampling settings; checked whole first, so a hand-edited or foreign file fails in one line, not mid-run."""
    from hafrm.data.formats import as_messages

    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"candidates file {path} is not JSON: {error}") from None
    samples = saved.get("samples") if isinstance(saved, dict) else None
    if not isinstance(samples, list) or not samples or not all(isinstance(s, dict) for s in samples):
        raise ValueError(f"candidates file {path} has no 'samples' list (write one with `hafrm best-of-n --output`)")
    first = samples[0].get("candidates")
    n = len(first) if isinstance(first, list) else 0
    specs = samples[0].get("scores")
    specs = list(specs) if isinstance(specs, dict) else []  # in the file's order: the order they were scored in
    for i, sample in enumerate(samples):
        where = f"candidates file {path}, sample {i}"
        as_messages(sample.get("prompt"), where)
        group, scored = sample.get("candidates"), sample.get("scores")
        if not isinstance(group, list) or len(group) != n or n == 0 or not all(isinstance(r, str) for r in group):
            raise ValueError(f"{where}: 'candidates' must be {n or 'one or more'} strings, as in sample 0")
        if not isinstance(scored, dict) or set(scored) != set(specs):
            raise ValueError(f"{where}: 'scores' must name the same models as sample 0 ({', '.join(specs)})")
        for spec, values in scored.items():
            if not isinstance(values, list) or len(values) != n or not all(_is_finite_number(v) for v in values):
                raise ValueError(f"{where}: the scores of {spec} must be {n} finite numbers")
    scores = {spec: np.array([s["scores"][spec] for s in samples], dtype=float) for spec in specs}
    sampling = {key: saved.get(key) for key in SAMPLING_SETTINGS}
    return [s["prompt"] for s in samples], [s["candidates"] for s in samples], scores, sampling


def _is_finite_number(value: object) -> bool:
    """json reads NaN and Infinity as floats, and True as a number would pass isinstance(int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
