"""Score prompt/response pairs with any saved reward model (AutoModelForSequenceClassification)."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from hafrm.data.encoding import PairEncoder, pad_sequences
from hafrm.data.formats import as_messages, as_response, require
from hafrm.data.reading import read_rows
from hafrm.pretrained import load_tokenizer, resolve_dtype


class RewardScorer:
    """Loads `reward_model/` of a hafrm output (or any sequence-classification reward model) and scores texts."""

    def __init__(self, model_dir: str | Path, max_length: int = 512, dtype: str = "fp32", device: str | None = None):
        from transformers import AutoModelForSequenceClassification

        model_dir = Path(model_dir)
        if (model_dir / "reward_model").is_dir():
            model_dir = model_dir / "reward_model"
        self.tokenizer = load_tokenizer(str(model_dir))
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=resolve_dtype(dtype)).to(self.device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.encoder = PairEncoder(self.tokenizer, max_length)

    @torch.no_grad()
    def score(self, prompts: list, responses: list[str], batch_size: int = 8) -> list[float]:
        """Reward of each (prompt, response); prompts are strings or chat-message lists."""
        encoded = [self.encoder.encode_single(as_messages(p, "input"), r) for p, r in zip(prompts, responses)]
        rewards: list[float] = []
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            batch = pad_sequences([e["input_ids"] for e in chunk], [e["prompt_length"] for e in chunk], self.tokenizer.pad_token_id, self.tokenizer.padding_side)
            logits = self.model(input_ids=batch["input_ids"].to(self.device), attention_mask=batch["attention_mask"].to(self.device)).logits
            rewards.extend(logits[:, 0].float().cpu().tolist())
        return rewards


def score_file(scorer: RewardScorer, source: str, batch_size: int = 8, prompt_column: str = "prompt", response_column: str = "response") -> list[dict]:
    """Rows of a JSONL/CSV/Parquet file with a 'reward' field added."""
    rows = []
    for where, row in read_rows(source):
        require(row, (prompt_column, response_column), where)
        rows.append((where, row))
    prompts = [as_messages(row[prompt_column], where) for where, row in rows]
    responses = [as_response(row[response_column], response_column, where) for where, row in rows]
    rewards = []
    for start in tqdm(range(0, len(rows), batch_size * 8), desc="scoring", leave=False):
        rewards += scorer.score(prompts[start : start + batch_size * 8], responses[start : start + batch_size * 8], batch_size)
    return [{**row, "reward": reward} for (_, row), reward in zip(rows, rewards)]
