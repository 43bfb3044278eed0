"""Score prompt/response pairs with any saved reward model (AutoModelForSequenceClassification)."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from hafrm.data.encoding import PAD, PairEncoder, length_sorted_batches, pad_sequences
from hafrm.data.errors import DataError
from hafrm.data.formats import SkipRow, as_messages, as_response, require
from hafrm.data.reading import read_rows
from hafrm.io.export import REWARD_MODEL_DIR
from hafrm.io.filechecks import refuse_checkpoint
from hafrm.io.pretrained import inference_device, load_pretrained, load_tokenizer, resolve_dtype
from hafrm.model.hybrid import METADATA_FILE, response_ends


class RewardScorer:
    """Loads `reward_model/` of a hafrm output (or any sequence-classification reward model) and scores texts.

    Decoder reward models (a `score` head on a causal backbone, as hafrm exports) are read with the same rule as
    training, `model.response_ends`; other classifiers (e.g. encoders) by their own logits. A classifier with several
    labels is read at `label_index`, which it must be given: no logit of it is a reward by default.
    """

    def __init__(
        self,
        model_dir: str | Path,
        max_length: int = 512,
        dtype: str = "fp32",
        device: str | None = None,
        label_index: int | None = None,
        normalize: bool = False,
    ):
        from transformers import AutoModelForSequenceClassification

        model_dir = Path(model_dir)
        check_scorable(model_dir)
        if (model_dir / REWARD_MODEL_DIR).is_dir():
            model_dir = model_dir / REWARD_MODEL_DIR
        self.tokenizer = load_tokenizer(str(model_dir))
        self.device = inference_device(device)
        model, info = load_pretrained(
            AutoModelForSequenceClassification, str(model_dir), resolve_dtype(dtype), loading_info=True
        )
        refuse_untrained_head(model, info, model_dir)
        self.model = model.to(self.device).eval()
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.encoder = PairEncoder(self.tokenizer, max_length)
        self.label_index = checked_label_index(self.model.config.num_labels, label_index, model_dir)
        self.normalization = reward_normalization(self.model.config, model_dir) if normalize else (0.0, 1.0)

    def encode(self, prompt, response: str) -> list[int]:
        """Token ids of one formatted (prompt, response), truncated so the response end is kept."""
        return self.encoder.encode_single(as_messages(prompt, "input"), response)["input_ids"]

    def encode_text(self, text: str) -> list[int]:
        """Token ids of an already formatted conversation (OpenRLHF queries): padding stripped, a turn that
        ended at EOS completed as training formatted it (`PairEncoder.normalise_rollout`)."""
        return self.encoder.encode_text(text)

    def encode_completion(self, prompt, completion: str) -> list[int]:
        """A TRL-style (prompt, completion): a prompt that is already formatted text is continued, not templated
        again."""
        if isinstance(prompt, str) and self.encoder.is_formatted(prompt):
            return self.encoder.encode_text(prompt + completion, finished=True)
        return self.encode(prompt, completion)

    def score(self, prompts: list, responses: list[str], batch_size: int = 8, progress: bool = False) -> list[float]:
        """Reward of each (prompt, response); prompts are strings or chat-message lists."""
        return self.score_ids([self.encode(p, r) for p, r in zip(prompts, responses)], batch_size, progress)

    @torch.no_grad()
    def score_ids(self, sequences: list[list[int]], batch_size: int = 8, progress: bool = False) -> list[float]:
        """Rewards of token sequences, batched by similar length to cut padding; results in input order."""
        rewards = [0.0] * len(sequences)
        for chunk in tqdm(
            length_sorted_batches([len(s) for s in sequences], batch_size),
            desc="scoring",
            disable=not progress,
            leave=False,
        ):
            batch = pad_sequences(
                [sequences[i] for i in chunk],
                [0] * len(chunk),
                self.tokenizer.pad_token_id,
                self.tokenizer.padding_side,
            )
            values = self._rewards(batch["input_ids"].to(self.device), batch["segment_ids"].to(self.device))
            mean, std = self.normalization
            for i, value in zip(chunk, values.float().cpu().tolist()):
                rewards[i] = (value - mean) / std
        return rewards

    def _rewards(self, input_ids: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
        attention_mask = (segment_ids != PAD).long()
        score = getattr(self.model, "score", None)
        if isinstance(score, torch.nn.Linear):
            hidden = self.model.base_model(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).last_hidden_state
            rows, ends = response_ends(segment_ids)
            return score(hidden[rows, ends].to(score.weight.dtype))[:, self.label_index]
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, self.label_index]


def refuse_untrained_head(model, loading_info: dict, model_dir) -> None:
    """A folder whose classification head transformers had to create (a plain causal LM, a base model) would give
    random rewards: refused in one line."""
    head = next((name for name, _ in model.named_children() if name in ("score", "classifier")), None)
    fresh = sorted(k for k in loading_info.get("missing_keys", ()) if head and k.split(".")[0] == head)
    if fresh:
        raise ValueError(
            f"{model_dir} is not a trained reward model: its head {head} is not in the checkpoint "
            f"({', '.join(fresh)} newly initialised), so its rewards would be random; give a hafrm output folder or "
            "a trained sequence classifier"
        )


def reward_normalization(config, model_dir) -> tuple[float, float]:
    """(mean, std) for (r - mean) / std, from the config, where OpenRLHF reward models and hafrm exports keep them."""
    mean, std = getattr(config, "mean", None), getattr(config, "std", None)
    if mean is None or std is None:
        raise ValueError(
            f"{model_dir} carries no reward statistics (config.mean and config.std) to normalize with; hafrm writes "
            "them at the end of training, OpenRLHF's train_rm too"
        )
    return float(mean), float(std)


def checked_label_index(num_labels: int, label_index: int | None, model_dir) -> int:
    """The logit read as the reward: the only one, or the one asked for among several."""
    if label_index is None:
        if num_labels != 1:
            raise ValueError(
                f"{model_dir} is a classifier with {num_labels} labels, not a one-label reward model: choose the "
                "logit that is the reward with a label index (--label-index)"
            )
        return 0
    if not 0 <= label_index < num_labels:
        raise ValueError(f"label index {label_index} is out of range for {model_dir}'s {num_labels} labels")
    return label_index


def check_scorable(folder: Path) -> None:
    """A training checkpoint, or a hafrm output folder whose export did not finish, is refused in one line; any
    other folder passes (third-party reward models are read as they are)."""
    refuse_checkpoint(folder)
    if (folder / REWARD_MODEL_DIR).is_dir() and not (folder / METADATA_FILE).is_file():
        raise ValueError(
            f"{folder} is an unfinished hafrm export: it has {REWARD_MODEL_DIR}/ but no {METADATA_FILE}, which an "
            "export writes last (it was cut off, or is being written now); train or export it again"
        )


def read_scoring_rows(
    source: str, prompt_column: str = "prompt", response_column: str = "response"
) -> list[tuple[dict, list, str]]:
    """(row, prompt messages, response) of every row of a JSONL/CSV/Parquet file, all checked before any model is
    loaded: a missing column or an empty response is an error naming the file and line."""
    rows = []
    for where, row in read_rows(source):
        require(row, (prompt_column, response_column), where)
        rows.append(
            (row, as_messages(row[prompt_column], where), response_text(row[response_column], response_column, where))
        )
    return rows


def score_rows(scorer: RewardScorer, rows: list[tuple[dict, list, str]], batch_size: int = 8) -> list[dict]:
    """The rows with a 'reward' field added."""
    rewards = scorer.score_ids(
        [scorer.encode(prompt, response) for _, prompt, response in rows], batch_size, progress=True
    )
    return [{**row, "reward": reward} for (row, _, _), reward in zip(rows, rewards)]


def response_text(value, column: str, where: str) -> str:
    """A response to score; unlike training pairs, an empty one is an error here, not a skip."""
    try:
        text = as_response(value, column, where)
    except SkipRow as reason:
        raise DataError(f"{where}: {reason}") from None
    if not text.strip():
        raise DataError(f"{where}: empty response in column '{column}'")
    return text
