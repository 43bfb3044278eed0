"""The paper code's settings, each one named option (configs/paper-exact-*.yaml), and its readout as an ablation."""

import numpy as np
import pytest
import torch
from helpers import batch_for

from hafrm.data import PairEncoder
from hafrm.data.splits import prompt_key
from hafrm.experiments.curves import VALIDATION, CurveSettings, training_and_evaluation_sets
from hafrm.model.hybrid import PADDED_LAST_COLUMN, HybridRewardModel
from hafrm.model.losses import HafObjective, bradley_terry_loss
from hafrm.training.config import TrainConfig
from hafrm.training.pipeline import PAPER_EVAL_PAIRS, training_arguments
from hafrm.training.trainer import pair_collator_for


def test_the_paper_exact_configs_load(tmp_path):
    for name in ("phi2", "mistral7b-lora", "smollm2-cpu"):
        config = TrainConfig.from_yaml(f"configs/paper-exact-{name}.yaml", output_dir=str(tmp_path))
        assert (config.reward_head_init, config.adam_epsilon, config.lr_scheduler) == ("zeros", 1e-5, "linear")
        assert config.warmup_ratio == 0 and config.dpo_weight == 0.2 and config.truncation == "paper"
        assert not config.group_by_length and config.reward_readout == "last-token"
    phi2 = TrainConfig.from_yaml("configs/paper-exact-phi2.yaml", output_dir=str(tmp_path))
    assert phi2.prompt_template == "Instruct: {prompt}\nOutput:" and phi2.max_steps == 3200 and phi2.eval_steps == 80


def test_a_zero_initialised_head_gives_zero_rewards(tiny_causal_lm, tokenizer, harmless_pairs):
    model = HybridRewardModel.from_causal_lm(tiny_causal_lm(len(tokenizer)), head_init="zeros")
    batch = batch_for(tokenizer, harmless_pairs[:2])
    assert torch.count_nonzero(model.score.weight) == 0
    assert torch.count_nonzero(model(batch["input_ids"], batch["segment_ids"]).rewards) == 0
    normal = HybridRewardModel.from_causal_lm(tiny_causal_lm(len(tokenizer)))
    assert torch.count_nonzero(normal.score.weight) == normal.score.weight.numel()


def test_a_reward_head_bias_gets_no_gradient_from_the_pairwise_loss():
    """Why hafrm leaves the paper head's bias out: r = w.h + b enters the loss only through r_w - r_l."""
    bias = torch.zeros((), requires_grad=True)
    chosen, rejected = torch.tensor([0.3, -1.2, 2.0]), torch.tensor([0.1, 0.4, -0.5])
    bradley_terry_loss(chosen + bias, rejected + bias).mean().backward()
    assert bias.grad.item() == 0.0


def test_dpo_weight_scales_the_dpo_loss_only():
    logps = torch.tensor([-10.0, -12.0, -11.0, -9.0])
    reference = torch.tensor([-10.5, -11.0, -11.5, -9.5])
    counts = torch.ones(4)
    plain, _ = HafObjective("dpo")(None, logps, counts, reference)
    weighted, _ = HafObjective("dpo", dpo_weight=0.2)(None, logps, counts, reference)
    torch.testing.assert_close(weighted, 0.2 * plain)
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.2])
    haf, _ = HafObjective("haf")(rewards, logps, counts, reference)
    haf_weighted, _ = HafObjective("haf", dpo_weight=0.2)(rewards, logps, counts, reference)
    torch.testing.assert_close(haf_weighted, haf)  # haf's policy weight is alpha


def test_paper_truncation_keeps_the_prompts_end_and_the_responses_start(tokenizer):
    encoder = PairEncoder(tokenizer, max_length=64, truncation="paper")
    prompt, chosen, rejected = list(range(100, 140)), list(range(200, 260)), list(range(300, 310))
    kept_prompt, (kept_chosen, kept_rejected), truncated = encoder.truncate(prompt, [chosen, rejected])
    assert truncated and kept_prompt == prompt[-16:]  # 64 / 4
    assert kept_chosen == chosen[:48] and kept_rejected == rejected  # the first 3/4, as TRL 0.7 cut them
    short_prompt = list(range(100, 110))  # under its budget: kept whole, the responses still cut to 3/4
    kept_prompt, (kept_chosen, _), _ = encoder.truncate(short_prompt, [chosen, rejected])
    assert kept_prompt == short_prompt and kept_chosen == chosen[:48]
    ours = PairEncoder(tokenizer, max_length=64).truncate(prompt, [chosen, rejected])
    assert ours[1][0][-1] == chosen[-1]  # the default keeps the response's end


def test_the_padded_last_column_readout_reads_shorter_rows_at_padding(tiny_causal_lm, tokenizer, harmless_pairs):
    causal_lm = tiny_causal_lm(len(tokenizer))
    ours = HybridRewardModel.from_causal_lm(causal_lm).eval()
    theirs = HybridRewardModel(causal_lm, ours.score, reward_readout=PADDED_LAST_COLUMN).eval()
    pairs = harmless_pairs[:2]
    batch = batch_for(tokenizer, pairs)
    widths = (batch["segment_ids"] != 0).sum(1)
    batch["input_ids"][batch["segment_ids"] == 0] = tokenizer.eos_token_id  # their padding: EOS
    with torch.no_grad():
        hidden = causal_lm.model(input_ids=batch["input_ids"], attention_mask=(batch["segment_ids"] != 0).long())[0]
        read = theirs(batch["input_ids"], batch["segment_ids"]).rewards
        last_token = ours(batch["input_ids"], batch["segment_ids"]).rewards
    torch.testing.assert_close(read, ours.score(hidden[:, -1]).squeeze(-1), rtol=1e-5, atol=1e-6)
    widest = widths == widths.max()
    torch.testing.assert_close(read[widest], last_token[widest], rtol=1e-5, atol=1e-6)
    assert (read[~widest] - last_token[~widest]).abs().min() > 1e-4  # the others are read at a pad
    with pytest.raises(ValueError, match="separate rows"):
        theirs(**{k: v for k, v in batch_for(tokenizer, pairs, share_prompt=True).items() if k != "margin"})


def test_the_readout_ablation_cannot_be_chosen_by_accident(tmp_path, tiny_causal_lm, tokenizer, caplog):
    with pytest.raises(ValueError, match="micro_batch_size 1"):
        TrainConfig(reward_readout=PADDED_LAST_COLUMN, output_dir=str(tmp_path))
    config = TrainConfig(reward_readout=PADDED_LAST_COLUMN, micro_batch_size=1, output_dir=str(tmp_path))
    model = HybridRewardModel(
        tiny_causal_lm(len(tokenizer)), torch.nn.Linear(32, 1), reward_readout=config.reward_readout
    )
    collator = pair_collator_for(model, tokenizer)
    assert (collator.pad_token_id, collator.padding_side, collator.share_prompt) == (
        tokenizer.eos_token_id,
        "right",
        False,
    )
    with caplog.at_level("WARNING", logger="hafrm.model.hybrid"):
        assert not model.check_prompt_sharing()
    assert "reads separate right-padded rows" in caplog.text
    with pytest.raises(ValueError, match="reward_readout must be one of"):
        HybridRewardModel(model.policy, model.score, reward_readout="last")
    arguments = training_arguments(config, has_eval=True)
    assert arguments.per_device_eval_batch_size == PAPER_EVAL_PAIRS and arguments.per_device_train_batch_size == 1
    assert TrainConfig(adam_epsilon=1e-5, output_dir=str(tmp_path)).adam_epsilon == 1e-5
    assert training_arguments(TrainConfig(adam_epsilon=1e-5, output_dir=str(tmp_path)), False).adam_epsilon == 1e-5


def test_the_validation_set_is_held_out_of_the_training_part_by_prompt():
    pool = [{"prompt": [{"role": "user", "content": f"q{i // 2}"}], "chosen": "a", "rejected": "b"} for i in range(60)]
    tests = [{"prompt": "test", "chosen": "x", "rejected": "y"}]
    settings = CurveSettings(data_root="", validation_pairs=10, ood=False)
    pairs, sets = training_and_evaluation_sets("beaver-safe", settings, lambda name: (pool, tests))
    assert list(sets) == ["beaver-safe", VALIDATION] and len(sets[VALIDATION]) == 10 and len(pairs) == 50
    assert not {prompt_key(p) for p in pairs} & {prompt_key(p) for p in sets[VALIDATION]}


def test_a_prompt_template_becomes_the_chat_template_every_reader_uses(tokenizer, tmp_path):
    from hafrm.data.encoding import chat_template_for

    plain = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = chat_template_for("Instruct: {prompt}\nOutput:")
    encoder = PairEncoder(plain, 512)
    prompt = [{"role": "user", "content": "How do I bake bread?"}]
    assert encoder.prompt_text(prompt) == "Instruct: How do I bake bread?\nOutput:"
    assert (
        encoder.conversation_text(prompt, "Use flour.")
        == f"Instruct: How do I bake bread?\nOutput: Use flour.{plain.eos_token}"
    )
    pair = encoder.encode_pair({"prompt": prompt, "chosen": "Use flour.", "rejected": "No."})
    assert plain.decode(pair["chosen_input_ids"][: pair["prompt_length"]]) == "Instruct: How do I bake bread?\nOutput:"
    assert plain.bos_token is None or pair["chosen_input_ids"][0] != plain.bos_token_id  # no BOS, as their code
    plain.save_pretrained(tmp_path)  # the export's tokenizer carries it
    assert type(plain).from_pretrained(tmp_path).chat_template == plain.chat_template
    with pytest.raises(ValueError, match="once"):
        TrainConfig(prompt_template="no placeholder", output_dir=str(tmp_path))


def test_checkpoint_selection_on_validation_and_on_test():
    from hafrm.eval.metrics import primary_head
    from hafrm.experiments.selection import RunCheckpoints, comparison_table

    test = {32: np.array([1, 1, 0, 0], bool), 64: np.array([1, 0, 0, 0], bool)}
    validation = {32: np.array([0, 0, 1], bool), 64: np.array([1, 1, 0], bool)}
    run = RunCheckpoints("r", "baseline", test, validation)
    assert (run.step("final"), run.step("validation"), run.step("test")) == (64, 64, 32)
    assert run.correct("test").mean() == 0.5 and run.correct("validation").mean() == 0.25
    tied = RunCheckpoints("t", "dpo", {16: test[32], 32: test[32]}, {16: validation[64], 32: validation[64]})
    assert tied.step("test") == 16 and tied.step("validation") == 16  # ties: the earliest step
    assert primary_head("dpo") == "implicit" and primary_head("haf") == "reward"
    rows = comparison_table([("r - t", run, tied)])
    assert len(rows) == 2 + 3
    # final: run [1,0,0,0] vs tied [1,1,0,0]: -25 points, 0 pairs for us, 1 against; McNemar p = 1
    assert rows[2].startswith("| r - t (final) | -25.0 [") and rows[2].endswith("| 0 / 1 | 1 |")


def test_a_run_without_a_validation_set_is_chosen_on_its_test_pairs_only():
    from hafrm.experiments.selection import RunCheckpoints, accuracy_table, comparison_table

    test = {32: np.array([1, 0], bool), 64: np.array([1, 1], bool)}
    earlier = RunCheckpoints("claim", "baseline", test, {})
    with pytest.raises(ValueError, match="no validation set"):
        earlier.step("validation")
    assert "no validation set" in accuracy_table({"claim": earlier})[2]
    rows = comparison_table([("x", earlier, earlier)])
    assert [r.split("(")[1].split(")")[0] for r in rows[2:]] == ["final", "test"]  # no validation row
