"""End-to-end training through the CLI on a tiny model: outputs, configs, evaluation, scoring."""

import json

import numpy as np
import pytest
import torch
import yaml
from helpers import train_command
from transformers import TrainingArguments

from hafrm.cli.main import main
from hafrm.eval.evaluation import score_pairs, score_responses
from hafrm.eval.scoring import RewardScorer
from hafrm.io.defaults import DEFAULT_EVAL_DATA, DEFAULT_TRAIN_DATA
from hafrm.io.pretrained import load_tokenizer
from hafrm.training.config import TrainConfig
from hafrm.training.loading import load_trained
from hafrm.training.pipeline import build_model, train
from hafrm.training.trainer import HafTrainer


def tiny_args(model_dir, output_dir, *extra):
    return train_command(
        model_dir,
        output_dir,
        *extra,
        eval_data=DEFAULT_EVAL_DATA,
        max_train_pairs=16,
        max_eval_pairs=8,
        learning_rate="1e-3",
        logging_steps=1,
    )


@pytest.fixture(scope="module")
def trained_haf(tiny_model_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("haf-run")
    assert main(tiny_args(tiny_model_dir, output, "--method", "haf")) == 0
    return output


def test_train_writes_hf_formats_and_metrics(trained_haf):
    for part in (
        "reward_model/config.json",
        "policy/config.json",
        "reward_head.safetensors",
        "hafrm.json",
        "eval_metrics.json",
    ):
        assert (trained_haf / part).exists(), part
    metrics = json.loads((trained_haf / "eval_metrics.json").read_text())
    for key in ("eval_reward_accuracy", "eval_implicit_accuracy", "eval_combined_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    metadata = json.loads((trained_haf / "hafrm.json").read_text())
    assert metadata["config"]["method"] == "haf" and metadata["data"]["rows_used"] == 24


def test_standalone_eval_matches_trainer_eval(trained_haf, harmless_pairs):
    """`hafrm eval` recomputes the same accuracies as the Trainer's evaluation on the same pairs."""
    from hafrm.data import load_pairs

    loaded = load_trained(trained_haf)
    pairs, _ = load_pairs(str(DEFAULT_EVAL_DATA), limit=8)
    scores, _ = score_pairs(loaded, pairs, progress=False)
    trainer_metrics = json.loads((trained_haf / "eval_metrics.json").read_text())
    for name, value in scores.metrics().items():
        assert value == pytest.approx(trainer_metrics[f"eval_{name}"]), name


def test_score_cli_uses_saved_sequence_classifier(trained_haf, tmp_path, capsys, write_jsonl):
    rows = [
        {"prompt": "How do I bake bread?", "response": "Mix flour, water, yeast; knead; bake."},
        {"prompt": "Hi", "response": "Hello"},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    assert main(["score", str(trained_haf), "--input", str(source), "--output", str(tmp_path / "out.jsonl")]) == 0
    scored = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    direct = RewardScorer(trained_haf).score([r["prompt"] for r in rows], [r["response"] for r in rows])
    assert [r["reward"] for r in scored] == pytest.approx(direct)
    assert scored[0]["reward"] != scored[1]["reward"]


def test_eval_cli_reports_each_data_set(trained_haf, tmp_path, capsys):
    assert (
        main(
            [
                "eval",
                str(trained_haf),
                "--data",
                f"harmless={DEFAULT_EVAL_DATA}",
                "--max-pairs",
                "4",
                "--output",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "r.json").read_text())
    assert results["harmless"]["pairs"] == 4 and "implicit_accuracy" in results["harmless"]


def test_response_scores_match_pair_scores_for_every_head(trained_haf):
    """Scoring responses one by one gives the chosen side of pair scoring, for each head; combined is their sum."""
    pairs = [
        {"prompt": "How do I bake bread?", "chosen": "Mix flour, water and yeast, then bake.", "rejected": "No."},
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "I will not."},
        {"prompt": "Name a colour", "chosen": "Blue.", "rejected": "Why would I?"},
    ]
    for pair in pairs:  # the canonical form load_pairs gives; score_responses also takes plain strings
        pair["prompt"] = [{"role": "user", "content": pair["prompt"]}]
    loaded = load_trained(trained_haf)
    pair_scores, _ = score_pairs(loaded, pairs, progress=False)
    prompts, chosen = [p["prompt"][0]["content"] for p in pairs], [p["chosen"] for p in pairs]
    together = score_responses(loaded, prompts, chosen, ["reward", "implicit", "combined"], batch_size=2)
    reward, implicit, combined = (score_responses(loaded, prompts, chosen, [h])[h] for h in together)  # one at a time
    assert reward == pytest.approx(pair_scores.chosen_rewards, abs=1e-4)
    assert implicit == pytest.approx(pair_scores.chosen_implicit, abs=1e-3)
    assert combined == pytest.approx(reward + implicit, abs=1e-3)
    for head, alone in zip(together, (reward, implicit, combined)):
        assert together[head] == pytest.approx(alone, abs=1e-4)
    assert loaded.score(prompts, chosen, "combined").tolist() == pytest.approx(combined.tolist(), abs=1e-4)


def test_best_of_n_cli_selector_equal_to_judge_always_agrees(trained_haf, tmp_path, capsys):
    output = tmp_path / "best-of-n.json"
    spec = f"{trained_haf}@reward"
    assert (
        main(
            [
                "best-of-n",
                "--prompts",
                str(DEFAULT_EVAL_DATA),
                "--num-prompts",
                "3",
                "--n",
                "3",
                "--max-new-tokens",
                "6",
                "--policy",
                str(trained_haf),
                "--selector",
                spec,
                f"{trained_haf}@combined",
                "--judge",
                spec,
                "--output",
                str(output),
            ]
        )
        == 0
    )
    result = json.loads(output.read_text())
    assert result["selectors"][spec]["top1_recall"] == 1.0 and result["selectors"][spec]["top2_recall"] == 1.0
    combined = result["selectors"][f"{trained_haf}@combined"]
    assert combined["reference"] == spec and combined["top1_recall_minus_reference"]["only_reference"] == 3 - round(
        3 * combined["top1_recall"]
    )
    assert result["policy"].endswith("policy") and result["chance"]["top1_recall"] == pytest.approx(1 / 3)
    assert [len(sample["candidates"]) for sample in result["samples"]] == [3, 3, 3]
    assert all(len(sample["scores"][spec]) == 3 for sample in result["samples"])  # the judge is this selector too
    assert set(result["samples"][0]["scores"]) == {spec, f"{trained_haf}@combined"}
    # read back: the candidates stay, the scored models are reused, only the new head is scored (no judge: scored
    # only), then compared with every score from the file
    again = tmp_path / "again.json"
    argv = ["best-of-n", "--candidates", str(output), "--output", str(again)]
    assert main([*argv, "--selector", f"{trained_haf}@implicit"]) == 0
    assert "selectors" not in json.loads(again.read_text()) and len(json.loads(again.read_text())["scored"]) == 3
    argv = ["best-of-n", "--candidates", str(again), "--judge", spec, "--output", str(again)]
    assert main([*argv, "--selector", spec, f"{trained_haf}@implicit"]) == 0
    rescored = json.loads(again.read_text())
    assert rescored["selectors"][f"{trained_haf}@implicit"]["reference"] == spec
    assert [s["candidates"] for s in rescored["samples"]] == [s["candidates"] for s in result["samples"]]
    assert all(new["scores"][spec] == old["scores"][spec] for new, old in zip(rescored["samples"], result["samples"]))
    assert set(rescored["samples"][0]["scores"]) == {spec, f"{trained_haf}@combined", f"{trained_haf}@implicit"}
    implicit = [new["scores"][f"{trained_haf}@implicit"] for new in rescored["samples"]]
    combined = [old["scores"][f"{trained_haf}@combined"] for old in result["samples"]]
    reward = [old["scores"][spec] for old in result["samples"]]
    assert np.array(implicit) + np.array(reward) == pytest.approx(np.array(combined), abs=1e-3)


def test_scorer_spec_errors_are_clear(tmp_path):
    from hafrm.serve.rlhf import spec_model_head

    with pytest.raises(ValueError, match="head must be one of"):
        spec_model_head(f"{tmp_path}@best")
    with pytest.raises(ValueError, match="only a hafrm output folder"):
        spec_model_head(f"{tmp_path}@implicit")
    assert spec_model_head(str(tmp_path)) == (str(tmp_path), "reward")


def test_baseline_leaves_lm_head_untouched(tiny_model_dir, tmp_path):
    assert main(tiny_args(tiny_model_dir, tmp_path, "--method", "baseline", "--max-steps", "2")) == 0
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    assert torch.equal(base.lm_head.weight, trained.lm_head.weight)
    assert not torch.equal(base.model.layers[0].mlp.up_proj.weight, trained.model.layers[0].mlp.up_proj.weight)
    assert "eval_implicit_accuracy" not in json.loads((tmp_path / "eval_metrics.json").read_text())


def test_yaml_config_with_cli_override(tiny_model_dir, tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump({"method": "dpo", "alpha": 0.5, "max_steps": 1, "lora": True, "lora_r": 4}))
    args = tiny_args(tiny_model_dir, tmp_path / "out", "--config", str(config_file), "--alpha", "0.3")
    assert main(args) == 0
    metadata = json.loads((tmp_path / "out" / "hafrm.json").read_text())["config"]
    assert metadata["method"] == "dpo" and metadata["alpha"] == 0.3 and metadata["lora"] is True
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()


def test_unknown_yaml_field_and_bad_data_are_clear_errors(tiny_model_dir, tmp_path, capsys, write_jsonl):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("methd: haf\n")
    assert main(["train", "--config", str(config_file)]) == 2
    assert "run.yaml: unknown option methd (did you mean method?)" in capsys.readouterr().err
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": "b"}])
    assert main(tiny_args(tiny_model_dir, tmp_path / "o", "--train-data", str(bad))) == 2
    assert "bad.jsonl:1: missing column(s) 'rejected'" in capsys.readouterr().err


def test_precomputed_reference_matches_live_reference(tiny_model_dir, tmp_path):
    """Same seed and data: training with cached reference log-probs equals training with a frozen copy."""
    metrics = {}
    for reference in ("precompute", "live"):
        out = tmp_path / reference
        assert main(tiny_args(tiny_model_dir, out, "--reference", reference, "--max-steps", "2")) == 0
        metrics[reference] = json.loads((out / "eval_metrics.json").read_text())
    for key in ("eval_loss", "eval_reward_accuracy", "eval_implicit_accuracy"):
        assert metrics["precompute"][key] == pytest.approx(metrics["live"][key], rel=1e-4), key


def test_attention_kernel_is_an_option_that_training_and_evaluation_keep_and_that_changes_no_result(
    tiny_model_dir, tmp_path
):
    metrics = {}
    for attention in ("sdpa", "eager"):
        out = tmp_path / attention
        assert main(tiny_args(tiny_model_dir, out, "--attn-implementation", attention, "--max-steps", "2")) == 0
        metrics[attention] = json.loads((out / "eval_metrics.json").read_text())
        assert load_trained(out).model.config._attn_implementation == attention  # evaluation loads the same kernel
    trained_with = build_model(
        TrainConfig(attn_implementation="eager"), str(tiny_model_dir), load_tokenizer(str(tiny_model_dir))
    )
    assert trained_with.config._attn_implementation == "eager"
    for key in ("eval_loss", "eval_reward_accuracy", "eval_implicit_accuracy"):
        assert metrics["eager"][key] == pytest.approx(metrics["sdpa"][key], rel=1e-4), key


def test_flex_attention_where_torch_cannot_train_it_is_a_clear_error_before_any_work(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    """torch has no flex attention backward on a CPU: training says so at once, not in the first step's backward."""
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    probe = torch.zeros(1, 1, 16, 16, requires_grad=True)
    try:
        flex.flex_attention(probe, probe, probe)
    except NotImplementedError:
        out = tmp_path / "flex"
        assert main(tiny_args(tiny_model_dir, out, "--attn-implementation", "flex_attention")) == 2
        assert "flex_attention cannot train on a CPU" in capsys.readouterr().err
        assert not any(out.glob("checkpoint-*")) and not (out / "eval_metrics.json").exists()
        model = build_model(TrainConfig(), str(tiny_model_dir), load_tokenizer(str(tiny_model_dir)))
        model.config._attn_implementation = "flex_attention"
        with pytest.raises(ValueError, match="flex_attention cannot train on a CPU"):  # the library's trainer too
            HafTrainer(model=model, args=TrainingArguments(str(tmp_path / "trainer"), use_cpu=True))
    else:  # a torch that can: the same option builds a trainable model
        config = TrainConfig(attn_implementation="flex_attention")
        model = build_model(config, str(tiny_model_dir), load_tokenizer(str(tiny_model_dir)))
        assert model.config._attn_implementation == "flex_attention"


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=10, micro_batch_size=4)
    with pytest.raises(ValueError, match="reference"):
        TrainConfig(reference="none")


def test_frozen_trunk_cache_gives_the_same_model_as_computing_the_trunk(tiny_model_dir, tmp_path, write_jsonl):
    """freeze_layers trains only the top layers and heads; replaying the cached trunk changes no number."""
    from safetensors.torch import load_file

    data = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": f"Question {i}?", "chosen": f"A careful answer number {i}.", "rejected": f"No {i}."}
            for i in range(16)
        ],
    )
    results = {}
    for cache in (True, False):
        config = TrainConfig(
            model=str(tiny_model_dir),
            method="haf",
            train_data=str(data),
            eval_fraction=0.25,
            max_length=64,
            batch_size=4,
            micro_batch_size=2,
            max_steps=3,
            learning_rate=1e-3,
            freeze_layers=1,
            trunk_cache=cache,
            output_dir=str(tmp_path / f"cache-{cache}"),
        )
        results[cache] = (
            train(config).metrics,
            load_file(tmp_path / f"cache-{cache}" / "reward_model" / "model.safetensors"),
        )
    (metrics_cached, weights_cached), (metrics_live, weights_live) = results[True], results[False]
    assert metrics_cached["eval_reward_accuracy"] == metrics_live["eval_reward_accuracy"]
    assert metrics_cached["eval_loss"] == pytest.approx(metrics_live["eval_loss"], rel=1e-5)
    base = load_file(tiny_model_dir / "model.safetensors")
    for name, tensor in weights_cached.items():
        torch.testing.assert_close(tensor, weights_live[name], rtol=1e-5, atol=1e-6, msg=name)
    # the frozen trunk (embeddings, layer 0) is the base model's; the top layer and the head moved
    torch.testing.assert_close(
        weights_cached["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"]
    )
    torch.testing.assert_close(weights_cached["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert not torch.allclose(
        weights_cached["model.layers.1.mlp.up_proj.weight"], base["model.layers.1.mlp.up_proj.weight"]
    )


def test_subset_during_training_full_eval_and_comparison_with_the_untrained_model(tiny_model_dir, tmp_path):
    from hafrm.data import load_pairs

    output = tmp_path / "run"
    config = TrainConfig(
        model=str(tiny_model_dir),
        method="haf",
        train_data=str(DEFAULT_TRAIN_DATA),
        eval_data=str(DEFAULT_EVAL_DATA),
        max_train_pairs=8,
        max_eval_pairs=12,
        eval_during_training_pairs=4,
        compare_to_untrained=True,
        max_length=64,
        batch_size=4,
        micro_batch_size=2,
        learning_rate=1e-3,
        eval_steps=1,
        output_dir=str(output),
    )
    metrics = train(config).metrics
    comparison = metrics["compared_to_untrained"]["reward"]
    assert comparison["pairs"] == 12  # the final evaluation and the comparison use the whole eval set
    accuracy, low, high = comparison["after"]
    assert low <= accuracy <= high and accuracy == metrics["eval_reward_accuracy"]
    assert comparison["difference"][0] == pytest.approx(comparison["after"][0] - comparison["before"][0])
    pairs, _ = load_pairs(str(DEFAULT_EVAL_DATA), limit=12)
    scores, _ = score_pairs(load_trained(output), pairs, progress=False)
    assert scores.metrics()["reward_accuracy"] == pytest.approx(metrics["eval_reward_accuracy"])


def test_named_eval_sets_evaluated_at_given_steps_with_per_pair_scores_kept(tiny_model_dir, tmp_path):
    from hafrm.eval.evaluation import PairScores
    from hafrm.training.pipeline import train

    rows = [
        {"prompt": f"Question {i}?", "chosen": f"A careful answer number {i}.", "rejected": f"No {i}."}
        for i in range(12)
    ]
    config = TrainConfig(
        model=str(tiny_model_dir),
        method="haf",
        max_length=64,
        batch_size=2,
        micro_batch_size=2,
        max_steps=4,
        learning_rate=1e-3,
        eval_at_steps=[1, 4],
        save_steps=2,  # a checkpoint between the evaluations too, none evaluated there
        save_total_limit=None,
        keep_eval_scores=True,
        freeze_layers=1,
        output_dir=str(tmp_path / "run"),
    )
    result = train(config, train_data=rows[:8], eval_data={"near": rows[8:], "far": rows[:3]})
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "run").glob("checkpoint-*"))
    assert checkpoints == [1, 2, 4]
    kept = sorted(p.name for p in (tmp_path / "run" / "eval-scores").glob("*.npz"))
    assert kept == [
        "step-1-far.npz",
        "step-1-near.npz",
        "step-4-far.npz",
        "step-4-near.npz",
    ]  # the last one is not redone
    evaluations = [e for e in result.log_history if "eval_near_reward_accuracy" in e]
    assert [e["step"] for e in evaluations] == [1, 4]
    assert (
        result.metrics["eval_far_reward_accuracy"]
        == next(e for e in result.log_history if "eval_far_reward_accuracy" in e and e["step"] == 4)[
            "eval_far_reward_accuracy"
        ]
    )
    scores = PairScores.load(tmp_path / "run" / "eval-scores" / "step-4-near.npz")
    assert len(scores.chosen_rewards) == 4 and not np.isnan(scores.chosen_implicit).any()
    assert scores.metrics()["reward_accuracy"] == pytest.approx(evaluations[-1]["eval_near_reward_accuracy"])


def test_kept_per_pair_scores_follow_the_eval_set_order(tiny_model_dir, tmp_path):
    """group_by_length hands the Trainer's evaluation a seed-dependent, length-grouped order; the kept per-pair
    scores must still line up with the eval set's pairs (pairing across seeds and the length split rely on it)."""
    from hafrm.data import load_pairs
    from hafrm.eval.evaluation import PairScores

    rows = [
        {"prompt": f"Question {i}?", "chosen": "A careful answer. " * (1 + i % 5), "rejected": "No. " * (1 + 3 * i % 7)}
        for i in range(20)
    ]
    output = tmp_path / "run"
    config = TrainConfig(
        model=str(tiny_model_dir),
        method="haf",
        max_length=64,
        batch_size=2,
        micro_batch_size=2,
        max_steps=2,
        learning_rate=1e-3,
        eval_at_steps=[2],
        keep_eval_scores=True,
        group_by_length=True,
        seed=1,
        output_dir=str(output),
    )
    train(config, train_data=rows[:4], eval_data={"test": rows[4:]})
    kept = PairScores.load(output / "eval-scores" / "step-2-test.npz")
    in_order, _ = score_pairs(load_trained(output), load_pairs(rows[4:], name="test")[0], progress=False)
    for name in PairScores.ARRAYS:
        np.testing.assert_allclose(getattr(kept, name), getattr(in_order, name), rtol=1e-4, atol=1e-5)
