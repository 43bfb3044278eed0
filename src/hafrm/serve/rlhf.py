"""Reward models as the judges of policies: named as MODEL[@HEAD], scored in batches, handed to online RLHF trainers.

TRL's GRPO and RLOO trainers take `reward_funcs`: callables `f(prompts, completions, **kwargs) -> list[float]`.
`reward_function("MODEL[@HEAD]")` builds one from a hafrm output (its reward head, implicit DPO reward or both
combined) or from any sequence-classification reward model. `hafrm rlhf` trains a policy with it (TRL's GRPOTrainer);
OpenRLHF loads `reward_model/` directly as an AutoModelForSequenceClassification, or calls `hafrm serve` through its
remote reward API. `hafrm best-of-n` and `hafrm policy-eval` score responses with the same `model_scorer`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from hafrm.eval.scores import check_head
from hafrm.eval.scoring import RewardScorer
from hafrm.io.filechecks import check_model_folder
from hafrm.model.hybrid import METADATA_FILE

Scorer = Callable[[list, list[str]], dict[str, list[float]]]  # (prompts, responses) -> each head's scores


def spec_model_head(spec: str) -> tuple[str, str]:
    """MODEL[@HEAD] as (model, head), checked before any model is loaded: a local folder must exist, and HEAD
    (reward | implicit | combined, default reward) other than reward needs a hafrm output folder."""
    model, _, head = spec.rpartition("@") if "@" in spec else (spec, "", "reward")
    check_head(head)
    check_model_folder(model)
    if head != "reward" and not (Path(model) / METADATA_FILE).exists():
        raise ValueError(
            f"{spec}: only a hafrm output folder has a {head} score; other reward models have only 'reward'"
        )
    return model, head


def model_scorer(
    model: str, heads: Sequence[str], max_length: int = 512, batch_size: int = 8, label_index: int | None = None
) -> Scorer:
    """One model, loaded once, as a Scorer of the given heads, all from one pass per batch: a hafrm output folder,
    or any sequence-classification reward model (its 'reward' only: its one logit, or logit `label_index` of a
    classifier with several)."""
    from hafrm.eval.evaluation import score_responses
    from hafrm.training.loading import load_trained

    if set(heads) != {"reward"} and (Path(model) / METADATA_FILE).exists():
        loaded = load_trained(model)
        return lambda prompts, responses: {
            head: scores.tolist()
            for head, scores in score_responses(loaded, prompts, responses, heads, max_length, batch_size).items()
        }
    scorer = RewardScorer(model, max_length=max_length, label_index=label_index)
    return lambda prompts, responses: {"reward": scorer.score(prompts, responses, batch_size)}


def score_with_models(
    specs: Sequence[str], prompts: list, responses: list[str], max_length: int = 512, batch_size: int = 8
) -> dict[str, list[float]]:
    """Each MODEL[@HEAD]'s score of every (prompt, response), in the order of `specs`: every spec is checked before
    any model is loaded, and each model is loaded once with all its heads scored in one pass (`model_scorer`)."""
    wanted: dict[str, dict[str, list[str]]] = {}  # model -> head -> the specs naming it
    for spec in dict.fromkeys(specs):
        model, head = spec_model_head(spec)
        wanted.setdefault(model, {}).setdefault(head, []).append(spec)
    scores: dict[str, list[float]] = {}
    for model, heads in wanted.items():
        by_head = model_scorer(model, list(heads), max_length, batch_size)(prompts, responses)
        for head, named in heads.items():
            scores.update(dict.fromkeys(named, by_head[head]))
    return {spec: scores[spec] for spec in dict.fromkeys(specs)}


def _text(value) -> str:
    """A completion given as text or as TRL conversational messages (the last message's content)."""
    if isinstance(value, list):
        return value[-1]["content"] if value else ""
    return value


def reward_function(
    spec: str | Path,
    max_length: int = 512,
    batch_size: int = 8,
    dtype: str = "fp32",
    device: str | None = None,
    label_index: int | None = None,
    normalize: bool = False,
):
    """A TRL-style reward function scoring (prompt, completion) pairs with MODEL[@HEAD] (see `spec_model_head`).

    Prompts may be chat messages (conversational datasets), plain strings (templated here, as in training), or, for
    the reward head, strings already formatted with the chat template (continued as they are, never templated twice).
    dtype (fp32, bf16, fp16) and device (default: CUDA when present) set where a reward head lives; a 7B model in
    fp32 needs about 28 GB. label_index chooses the logit of a classifier with several (refused without it).
    normalize: (r - mean) / std with the statistics the reward model carries (reward head only).
    """
    model, head = spec_model_head(str(spec))
    if head == "reward":
        scorer = RewardScorer(
            model, max_length=max_length, dtype=dtype, device=device, label_index=label_index, normalize=normalize
        )

        def hafrm_reward(prompts, completions, **kwargs) -> list[float]:
            sequences = [scorer.encode_completion(p, _text(c)) for p, c in zip(prompts, completions)]
            return scorer.score_ids(sequences, batch_size)

    else:
        if normalize:
            raise ValueError(f"{spec}: normalize applies to a reward head, whose statistics the export carries")
        score = model_scorer(model, [head], max_length, batch_size)

        def hafrm_reward(prompts, completions, **kwargs) -> list[float]:
            return score(list(prompts), [_text(c) for c in completions])[head]

    hafrm_reward.__name__ = f"hafrm_{head}_{Path(model).name}"
    return hafrm_reward
