"""`hafrm policy-eval`: completions of saved policies sampled as stated, their log-probs and KL checked against a
token-by-token computation, and reward scores that can be added to a saved file later."""

import json

import pytest
import torch

from hafrm.cli.main import main
from hafrm.data.encoding import PairEncoder
from hafrm.eval.scoring import RewardScorer
from hafrm.io.pretrained import load_causal_lm, load_tokenizer
from hafrm.model.hybrid import HybridRewardModel
from hafrm.rlhf.evaluation import completion_logprobs, sample_completions


@pytest.fixture(scope="module")
def reward_dir(tokenizer, tmp_path_factory, tiny_causal_lm):
    folder = tmp_path_factory.mktemp("rm")
    HybridRewardModel.from_causal_lm(tiny_causal_lm(len(tokenizer), seed=5)).export(folder, tokenizer, {})
    return folder


@pytest.fixture(scope="module")
def other_policy(tokenizer, tmp_path_factory, tiny_causal_lm):
    folder = tmp_path_factory.mktemp("other-policy")
    tiny_causal_lm(len(tokenizer), seed=7).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Question number {i}?"}) + "\n" for i in range(3)))
    return path


def test_log_probs_match_a_token_by_token_computation(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_causal_lm(str(tiny_model_dir), torch.float32).eval()
    encoder = PairEncoder(tokenizer)
    prompt_ids = [
        encoder.tokenize(encoder.prompt_text([{"role": "user", "content": text}]))
        for text in ("Hi", "A longer question?")
    ]
    rows = sample_completions(model, tokenizer, prompt_ids, samples=2, max_new_tokens=5, seed=0, batch_size=2)
    assert [(r["prompt_id"], r["sample"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    batched = completion_logprobs(model, prompt_ids, rows, batch_size=4)
    with torch.no_grad():
        for row, value in zip(rows, batched):
            ids = prompt_ids[row["prompt_id"]] + row["completion_ids"]
            expected = 0.0
            for t in range(len(prompt_ids[row["prompt_id"]]), len(ids)):
                logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1]
                expected += torch.log_softmax(logits, -1)[ids[t]].item()
            assert value == pytest.approx(expected, abs=1e-4)
    again = sample_completions(model, tokenizer, prompt_ids, samples=2, max_new_tokens=5, seed=0, batch_size=2)
    assert again == rows  # seeded


def test_policy_eval_scores_kl_and_later_judges(
    tiny_model_dir, other_policy, reward_dir, prompts_file, tmp_path, capsys
):
    output = tmp_path / "completions.jsonl"
    argv = ["policy-eval", "--prompts", str(prompts_file), "--start-policy", str(tiny_model_dir)]
    argv += ["--policy", f"start={tiny_model_dir}", f"other={other_policy}", "--samples", "2", "--max-new-tokens", "4"]
    assert main([*argv, "--output", str(output)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["start"]["kl_to_start"] == 0.0 and summary["start"]["completions"] == 6
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    prompts, rows = lines[0]["prompts"], lines[1:]
    assert len(rows) == 12 and all(r["scores"] == {} for r in rows)
    assert all(r["decoding"] == {"samples": 2, "max_new_tokens": 4, "seed": 0, "temperature": 1.0} for r in rows)
    other = [r for r in rows if r["policy"] == "other"]
    assert summary["other"]["kl_to_start"] == pytest.approx(sum(r["logprob"] - r["start_logprob"] for r in other) / 6)

    # a judge added afterwards scores the saved completions, nothing sampled again
    assert (
        main(["policy-eval", "--completions", str(output), "--reward-model", str(reward_dir), "--output", str(output)])
        == 0
    )
    judged = [json.loads(line) for line in output.read_text().splitlines()][1:]
    assert [r["completion"] for r in judged] == [r["completion"] for r in rows]
    expected = RewardScorer(reward_dir).score(
        [prompts[r["prompt_id"]] for r in judged], [r["completion"] for r in judged]
    )
    assert [r["scores"][str(reward_dir)] for r in judged] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_policy_eval_refuses_sampling_options_on_saved_completions(tmp_path, capsys, tiny_model_dir):
    saved = tmp_path / "c.jsonl"
    saved.write_text(json.dumps({"prompts": []}) + "\n")
    argv = ["policy-eval", "--completions", str(saved), "--policy", str(tiny_model_dir), "--output", str(saved)]
    assert main(argv) == 2
    assert "nothing is sampled again" in capsys.readouterr().err
