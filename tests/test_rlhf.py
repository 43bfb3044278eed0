"""RLHF hand-off: a hafrm reward model drives a real TRL GRPO step on a tiny policy."""

import math

import pytest
from datasets import Dataset

from hafrm.eval.scoring import RewardScorer
from hafrm.model.hybrid import HybridRewardModel
from hafrm.serve.rlhf import reward_function


@pytest.fixture(scope="module")
def reward_dir(tokenizer, tmp_path_factory, tiny_causal_lm):
    folder = tmp_path_factory.mktemp("rm")
    HybridRewardModel.from_causal_lm(tiny_causal_lm(len(tokenizer), seed=3)).export(folder, tokenizer, {})
    return folder


def test_reward_function_matches_scorer_for_text_and_messages(reward_dir):
    reward = reward_function(reward_dir)
    prompts = ["Hi", [{"role": "user", "content": "How are you?"}]]
    completions = ["Hello!", [{"role": "assistant", "content": "Fine, thanks."}]]
    expected = RewardScorer(reward_dir).score(prompts, ["Hello!", "Fine, thanks."])
    assert reward(prompts, completions) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("trainer_name", ["GRPO", "RLOO"])
def test_online_rl_trainer_runs_with_hafrm_reward(reward_dir, tiny_model_dir, tmp_path, trainer_name):
    import trl
    from transformers import AutoModelForCausalLM

    from hafrm.io.pretrained import load_tokenizer

    Config, Trainer = getattr(trl, f"{trainer_name}Config"), getattr(trl, f"{trainer_name}Trainer")

    tokenizer = load_tokenizer(str(tiny_model_dir))
    reward = reward_function(reward_dir)
    prompts = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"Tell me about topic {i}."}]} for i in range(4)]
    )
    args = Config(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=6,
        max_steps=1,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        bf16=False,
        gradient_checkpointing=False,
    )
    trainer = Trainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        reward_funcs=[reward],
        args=args,
        train_dataset=prompts,
        processing_class=tokenizer,
    )
    trainer.train()
    logged = [
        entry for entry in trainer.state.log_history if any(k.startswith(f"rewards/{reward.__name__}") for k in entry)
    ]
    assert logged, trainer.state.log_history
    value = next(v for k, v in logged[0].items() if k.startswith(f"rewards/{reward.__name__}") and k.endswith("mean"))
    assert math.isfinite(value) and value != 0.0
