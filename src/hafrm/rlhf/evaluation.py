"""Saved policies evaluated after the fact (`hafrm policy-eval`): completions sampled on held-out prompts, scored by
any set of reward models, with the KL to the start policy, so that a judge can be added later without retraining.

Decoding is fixed and recorded with every row: `samples` completions per prompt, sampled at temperature 1 with no
top-k or top-p cut, up to `max_new_tokens`, the torch seed set to `seed` before each policy's first batch. Sampling
from the policy's own distribution is what makes the KL estimate below unbiased.

KL to the start policy, estimator k1: for each completion y of prompt x, log pi(y | x) - log pi_0(y | x), the sum
over its tokens (the end-of-turn token included when it was generated) of the two models' log-probabilities, each
from a forward pass in fp32; its mean over completions sampled from pi estimates KL(pi || pi_0) without bias.

Output: one JSON line per (policy, prompt, sample) with the completion, its token count, whether it ended by itself,
its log-probabilities under the policy and the start policy, and each reward model's score. Given back as
`--completions`, the file is scored by new reward models only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hafrm.data.encoding import PairEncoder
from hafrm.io.atomic import write_atomically
from hafrm.io.pretrained import inference_device, load_causal_lm, load_tokenizer, resolve_policy_path
from hafrm.serve.rlhf import score_with_models

logger = logging.getLogger(__name__)
KL_ESTIMATOR = "k1: mean over sampled completions of log pi(y|x) - log pi_start(y|x)"


def end_token_ids(model, tokenizer) -> set[int]:
    """The token ids that end a completion: the generation config's EOS ids and the tokenizer's."""
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


@torch.no_grad()
def sample_completions(
    model, tokenizer, prompt_ids: list[list[int]], samples: int, max_new_tokens: int, seed: int, batch_size: int = 8
) -> list[dict]:
    """`samples` completions of each prompt (token ids), in prompt order: {prompt_id, sample, completion_ids,
    finished}; completion_ids end with the end-of-turn token where one was generated."""
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    ends, pad = end_token_ids(model, tokenizer), tokenizer.pad_token_id
    rows = []
    for start in tqdm(range(0, len(prompt_ids), batch_size), desc="sampling", leave=False):
        batch = prompt_ids[start : start + batch_size]
        width = max(map(len, batch))
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=device)
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=samples,
            pad_token_id=pad,
        )
        for row, generated in enumerate(output[:, width:].tolist()):
            cut = next((i for i, token in enumerate(generated) if token in ends), None)
            rows.append(
                {
                    "prompt_id": start + row // samples,
                    "sample": row % samples,
                    "completion_ids": generated if cut is None else generated[: cut + 1],
                    "finished": cut is not None,
                }
            )
    return rows


@torch.no_grad()
def completion_logprobs(model, prompt_ids: list[list[int]], rows: list[dict], batch_size: int = 8) -> list[float]:
    """log pi(completion | prompt) of each row under `model`: the sum of its tokens' log-probabilities."""
    device = next(model.parameters()).device
    totals = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        sequences = [prompt_ids[r["prompt_id"]] + r["completion_ids"] for r in batch]
        width = max(map(len, sequences))
        input_ids = torch.tensor([s + [0] * (width - len(s)) for s in sequences], device=device)
        attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=device)
        logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        for i, row in enumerate(batch):
            first = len(prompt_ids[row["prompt_id"]]) - 1  # the position that predicts the first completion token
            totals.append(float(logprobs[i, first : first + len(row["completion_ids"])].sum()))
    return totals


def evaluate_policy(
    label: str,
    policy: str,
    start_policy: str | None,
    prompts: list[list[dict]],
    samples: int = 2,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 8,
) -> list[dict]:
    """Rows of one policy (see the module docstring), without reward scores yet."""
    path, start_path = resolve_policy_path(policy), resolve_policy_path(start_policy)
    tokenizer = load_tokenizer(path)
    encoder = PairEncoder(tokenizer)
    prompt_ids = [encoder.tokenize(encoder.prompt_text(p)) for p in prompts]
    device = inference_device()
    model = load_causal_lm(path, torch.float32).to(device).eval()
    rows = sample_completions(model, tokenizer, prompt_ids, samples, max_new_tokens, seed, batch_size)
    own = completion_logprobs(model, prompt_ids, rows, batch_size)
    if start_path == path:  # the start policy itself: its log-probs are the reference's
        reference = own
    else:
        del model
        start = load_causal_lm(start_path, torch.float32).to(device).eval()
        reference = completion_logprobs(start, prompt_ids, rows, batch_size)
    decoding = {"samples": samples, "max_new_tokens": max_new_tokens, "seed": seed, "temperature": 1.0}
    return [
        {
            "policy": label,
            "policy_path": path,
            "start_policy": start_path,
            "prompt_id": row["prompt_id"],
            "sample": row["sample"],
            "completion": tokenizer.decode(row["completion_ids"], skip_special_tokens=True),
            "completion_tokens": len(row["completion_ids"]),
            "finished": row["finished"],
            "logprob": logprob,
            "start_logprob": start_logprob,
            "decoding": decoding,
            "scores": {},
        }
        for row, logprob, start_logprob in zip(rows, own, reference)
    ]


def add_scores(rows: list[dict], prompts: list[list[dict]], specs: Sequence[str], batch_size: int = 8) -> None:
    """Each MODEL[@HEAD] not yet in the rows' scores scores every completion (models loaded once each)."""
    new = [spec for spec in dict.fromkeys(specs) if any(spec not in row["scores"] for row in rows)]
    if not new:
        return
    scores = score_with_models(
        new, [prompts[row["prompt_id"]] for row in rows], [row["completion"] for row in rows], batch_size=batch_size
    )
    for i, row in enumerate(rows):
        row["scores"].update({spec: scores[spec][i] for spec in new})


def summary(rows: list[dict]) -> dict:
    """Per policy: completions, mean length, share finished, the KL estimate and each reward model's mean score."""
    result = {}
    for label in dict.fromkeys(row["policy"] for row in rows):
        own = [row for row in rows if row["policy"] == label]
        kl = np.array([row["logprob"] - row["start_logprob"] for row in own])
        result[label] = {
            "completions": len(own),
            "mean_completion_tokens": float(np.mean([row["completion_tokens"] for row in own])),
            "finished": float(np.mean([row["finished"] for row in own])),
            "kl_to_start": float(kl.mean()),
            "kl_estimator": KL_ESTIMATOR,
            "mean_scores": {spec: float(np.mean([row["scores"][spec] for row in own])) for spec in own[0]["scores"]},
        }
    return result


def write_rows(path: str | Path, prompts: list[list[dict]], rows: list[dict]) -> None:
    """The output file: a first line with the prompts, then one line per completion (read back by `read_rows`)."""
    lines = [json.dumps({"prompts": prompts}, ensure_ascii=False)] + [json.dumps(r, ensure_ascii=False) for r in rows]
    write_atomically(Path(path), lambda target: target.write_text("\n".join(lines) + "\n", encoding="utf-8"))


def read_rows(path: str | Path) -> tuple[list[list[dict]], list[dict]]:
    """An earlier output's prompts and rows; a file that is not one is one clear error."""
    try:
        lines = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"completions file {path} is not JSON lines: {error}") from None
    if not lines or not isinstance(lines[0], dict) or not isinstance(lines[0].get("prompts"), list):
        raise ValueError(f"completions file {path} does not start with its prompts (write one with policy-eval)")
    rows = lines[1:]
    needed = ("policy", "prompt_id", "completion", "scores")
    if not rows or not all(isinstance(r, dict) and all(k in r for k in needed) for r in rows):
        raise ValueError(f"completions file {path}: every line after the first needs {', '.join(needed)}")
    return lines[0]["prompts"], rows
