"""Score prompt/response pairs with any saved reward model (AutoModelForSequenceClassification)."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from hafrm.data.encoding import PairEncoder, length_sorted_batches, pad_sequences
from hafrm.data.errors import DataError
from hafrm.data.formats import SkipRow, as_messages, as_response, require
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

    def encode(self, prompt, response: str) -> list[int]:
        """Token ids of one formatted (prompt, response), truncated so the response end is kept."""
        return self.encoder.encode_single(as_messages(prompt, "input"), response)["input_ids"]

    def encode_text(self, text: str) -> list[int]:
        """Token ids of an already formatted conversation (OpenRLHF queries), keeping its end."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[-self.encoder.max_length :]

    def score(self, prompts: list, responses: list[str], batch_size: int = 8, progress: bool = False) -> list[float]:
        """Reward of each (prompt, response); prompts are strings or chat-message lists."""
        return self.score_ids([self.encode(p, r) for p, r in zip(prompts, responses)], batch_size, progress)

    @torch.no_grad()
    def score_ids(self, sequences: list[list[int]], batch_size: int = 8, progress: bool = False) -> list[float]:
        """Rewards of token sequences, batched by similar length to cut padding; results in input order."""
        rewards = [0.0] * len(sequences)
        for chunk in tqdm(length_sorted_batches([len(s) for s in sequences], batch_size), desc="scoring", disable=not progress, leave=False):
            batch = pad_sequences([sequences[i] for i in chunk], [0] * len(chunk), self.tokenizer.pad_token_id, self.tokenizer.padding_side)
            logits = self.model(input_ids=batch["input_ids"].to(self.device), attention_mask=batch["attention_mask"].to(self.device)).logits
            for i, value in zip(chunk, logits[:, 0].float().cpu().tolist()):
                rewards[i] = value
        return rewards


def score_file(scorer: RewardScorer, source: str, batch_size: int = 8, prompt_column: str = "prompt", response_column: str = "response") -> list[dict]:
    """Rows of a JSONL/CSV/Parquet file with a 'reward' field added."""
    rows = []
    for where, row in read_rows(source):
        require(row, (prompt_column, response_column), where)
        rows.append((where, row))
    sequences = [scorer.encode(as_messages(row[prompt_column], where), response_text(row[response_column], response_column, where)) for where, row in rows]
    rewards = scorer.score_ids(sequences, batch_size, progress=True)
    return [{**row, "reward": reward} for (_, row), reward in zip(rows, rewards)]


def response_text(value, column: str, where: str) -> str:
    """A response to score; unlike training pairs, an empty one is an error here, not a skip."""
    try:
        return as_response(value, column, where)
    except SkipRow as reason:
        raise DataError(f"{where}: {reason}") from None
