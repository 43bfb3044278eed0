"""Turn canonical pairs into token ids for the shared-backbone model, and batch chosen+rejected together.

A sequence is prompt tokens followed by response tokens. The response is what both heads judge: the
reward head reads the hidden state of the last (non-pad) token, the policy head scores response
tokens only. When a pair is longer than max_length the prompt is cut from the left first (the most
recent turns stay) and, if that is not enough, the response is cut from the left, so the response
end, where the reward is read, is always kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hafrm.data.formats import Messages

HH_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}


class PairEncoder:
    """Format prompt + response with the tokenizer's chat template (or HH text without one) and tokenize."""

    def __init__(self, tokenizer, max_length: int = 512):
        if max_length < 8:
            raise ValueError(f"max_length must be at least 8, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = max_length

    def texts(self, prompt: Messages, response: str) -> tuple[str, str]:
        """(prompt_text, response_text): their concatenation is the full formatted conversation."""
        if self.tokenizer.chat_template:
            prompt_text = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            full = self.tokenizer.apply_chat_template(
                prompt + [{"role": "assistant", "content": response}], tokenize=False
            )
            if full.startswith(prompt_text):
                return prompt_text, full[len(prompt_text) :]
            return prompt_text, response + (self.tokenizer.eos_token or "")
        history = "".join(f"\n\n{HH_ROLES.get(m['role'], m['role'])}: {m['content']}" for m in prompt)
        return history + "\n\nAssistant:", " " + response + (self.tokenizer.eos_token or "")

    def encode_response(self, prompt: Messages, response: str) -> tuple[list[int], list[int]]:
        prompt_text, response_text = self.texts(prompt, response)
        prompt_ids = self.tokenizer(prompt_text, add_special_tokens=not self.tokenizer.chat_template)["input_ids"]
        response_ids = self.tokenizer(response_text, add_special_tokens=False)["input_ids"]
        return prompt_ids, response_ids

    def truncate(self, prompt_ids: list[int], responses: list[list[int]]) -> tuple[list[int], list[list[int]], bool]:
        """Cut a shared prompt and its responses to max_length, keeping every response's end."""
        longest = max(len(r) for r in responses)
        if len(prompt_ids) + longest <= self.max_length:
            return prompt_ids, responses, False
        prompt_budget = max(self.max_length - longest, min(len(prompt_ids), self.max_length // 2))
        response_budget = self.max_length - prompt_budget
        kept_prompt = prompt_ids[len(prompt_ids) - prompt_budget :] if prompt_budget else []
        return kept_prompt, [r[max(0, len(r) - response_budget) :] for r in responses], True

    def encode_pair(self, pair: dict) -> dict:
        """Token ids of chosen and rejected sequences and where each response starts."""
        prompt_ids, chosen = self.encode_response(pair["prompt"], pair["chosen"])
        _, rejected = self.encode_response(pair["prompt"], pair["rejected"])
        prompt_ids, (chosen, rejected), truncated = self.truncate(prompt_ids, [chosen, rejected])
        return {
            "chosen_input_ids": prompt_ids + chosen,
            "rejected_input_ids": prompt_ids + rejected,
            "prompt_length": len(prompt_ids),
            "margin": float(pair.get("margin") or 0.0),
            "truncated": truncated,
            "length": len(prompt_ids) + max(len(chosen), len(rejected)),
        }

    def encode_single(self, prompt: Messages, response: str) -> dict:
        """One prompt/response sequence for scoring."""
        prompt_ids, response_ids = self.encode_response(prompt, response)
        prompt_ids, (response_ids,), _ = self.truncate(prompt_ids, [response_ids])
        return {"input_ids": prompt_ids + response_ids, "prompt_length": len(prompt_ids)}


def pad_sequences(sequences: list[list[int]], prompt_lengths: list[int], pad_id: int, padding_side: str) -> dict:
    """Pad to a common length; response_mask marks response tokens (what the policy head scores)."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    response_mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, (ids, prompt_length) in enumerate(zip(sequences, prompt_lengths)):
        start = width - len(ids) if padding_side == "left" else 0
        input_ids[row, start : start + len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, start : start + len(ids)] = 1
        response_mask[row, start + prompt_length : start + len(ids)] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar length, so little of each batch is padding; callers put results back by index."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@dataclass
class PairCollator:
    """Stack chosen rows then rejected rows into one batch of 2B sequences for a single forward pass."""

    pad_token_id: int
    padding_side: str = "right"

    def __call__(self, features: list[dict]) -> dict:
        sequences = [f["chosen_input_ids"] for f in features] + [f["rejected_input_ids"] for f in features]
        prompt_lengths = [f["prompt_length"] for f in features] * 2
        batch = pad_sequences(sequences, prompt_lengths, self.pad_token_id, self.padding_side)
        batch["margin"] = torch.tensor([f["margin"] for f in features], dtype=torch.float32)
        if "reference_chosen_logps" in features[0]:
            batch["reference_logps"] = torch.tensor(
                [f["reference_chosen_logps"] for f in features] + [f["reference_rejected_logps"] for f in features],
                dtype=torch.float32,
            )
        return batch
