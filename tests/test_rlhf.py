"""RLHF hand-off: a hafrm reward model drives a real TRL GRPO step on a tiny policy."""

import json
import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from hafrm.cli.main import main
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


# ---------------------------------------------------------------------------------------- hafrm rlhf


def rlhf_argv(reward, prompts, policy, output, *extra):
    return [
        "rlhf",
        "--reward-model",
        str(reward),
        "--prompts",
        str(prompts),
        "--policy",
        str(policy),
        "--output-dir",
        str(output),
        "--max-steps",
        "2",
        "--num-generations",
        "2",
        "--per-device-train-batch-size",
        "4",
        "--max-completion-length",
        "6",
        "--save-steps",
        "1",
        "--learning-rate",
        "1e-3",
        *extra,
    ]


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prompts")
    rows = [{"prompt": f"Tell me about topic {i}."} for i in range(4)]
    (folder / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder / "prompts.jsonl"


def test_rlhf_command_trains_the_policy_on_the_reward_models_scores(reward_dir, prompts_file, tiny_model_dir, tmp_path):
    output = tmp_path / "run"
    assert main(rlhf_argv(reward_dir, prompts_file, tiny_model_dir, output)) == 0
    record = json.loads((output / "rlhf.json").read_text())
    assert record["steps"] == 2 and record["exported_step"] == 2 and record["prompts"]["used"] == 4
    start = load_file(tiny_model_dir / "model.safetensors")
    trained = load_file(output / "policy" / "model.safetensors")
    moved = [name for name in start if not torch.equal(start[name], trained[name])]
    assert moved, "the policy's weights did not move"
    assert (output / "checkpoint-1" / "model.safetensors").exists() and (output / "checkpoint-2").is_dir()

    rows = [json.loads(line) for line in (output / "rollouts.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1] * 4 + [2] * 4
    prompts = [json.loads(line)["prompt"] for line in prompts_file.read_text().splitlines()]
    recomputed = RewardScorer(reward_dir).score(
        [prompts[r["prompt_id"]] for r in rows], [r["completion"] for r in rows]
    )
    assert [r["reward"] for r in rows] == pytest.approx(recomputed, rel=1e-5, abs=1e-6)
    history = json.loads((output / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    logged = [
        next(v for k, v in entry.items() if k.startswith("rewards/") and k.endswith("/mean"))
        for entry in history
        if "reward" in entry
    ]
    for step, mean in zip((1, 2), logged):
        assert mean == pytest.approx(np.mean([r["reward"] for r in rows if r["step"] == step]), rel=1e-5)


def test_rlhf_bad_inputs_are_one_line_exit_2(reward_dir, prompts_file, tiny_model_dir, tokenizer, tmp_path, capsys):
    from transformers import LlamaForSequenceClassification

    from hafrm.testing import tiny_llama

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    two_labels = tmp_path / "two-labels"
    tiny_llama(len(tokenizer), model_class=LlamaForSequenceClassification, num_labels=2).save_pretrained(two_labels)
    tokenizer.save_pretrained(two_labels)
    capsys.readouterr()
    cases = [
        (tmp_path / "no-such-rm", prompts_file, "does not exist"),
        (reward_dir, empty, "no prompts"),
        (two_labels, prompts_file, "--label-index"),
    ]
    for reward, prompts, message in cases:
        assert main(rlhf_argv(reward, prompts, tiny_model_dir, tmp_path / "out")) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("hafrm rlhf: error:")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
        assert not (tmp_path / "out" / "rlhf.json").exists()


def test_rlhf_help_documents_every_option(capsys):
    from hafrm.rlhf.config import RlhfConfig

    with pytest.raises(SystemExit):
        main(["rlhf", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in RlhfConfig.field_names():
        assert f"--{name.replace('_', '-')}" in text
        help_text = " ".join(RlhfConfig.__dataclass_fields__[name].metadata["help"].split())
        assert help_text[:40] in text, name


def test_a_resumed_run_drops_the_rollouts_it_samples_again_and_a_line_cut_off(tmp_path):
    from hafrm.rlhf.pipeline import keep_rows_up_to

    path = tmp_path / "rollouts.jsonl"
    rows = [json.dumps({"step": step, "reward": 0.5}) for step in (1, 1, 2, 3)]
    path.write_text("\n".join(rows) + '\n{"step": 3, "rew')
    keep_rows_up_to(path, 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 1, 2]
