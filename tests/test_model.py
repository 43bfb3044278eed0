"""The hybrid model on a tiny random Llama: pooling, log-probs, gradients, padding, export, LoRA reference."""

import pytest
import torch
import torch.nn.functional as F
from helpers import batch_for, padding_mask
from transformers import AutoModelForSequenceClassification

from hafrm.data.encoding import RESPONSE
from hafrm.model.hybrid import HybridRewardModel, LoraSettings, TokenLogps, logprob_chunk_tokens, response_ends
from hafrm.model.losses import HafObjective


@pytest.fixture
def hybrid(tokenizer, tiny_causal_lm):
    return HybridRewardModel.from_causal_lm(tiny_causal_lm(len(tokenizer)))


def test_response_ends_left_and_right_padding_and_shared_rows():
    segments = torch.tensor([[1, 2, 2, 0, 0], [0, 0, 1, 2, 2], [1, 2, 2, 3, 3], [1, 1, 2, 3, 0]])
    rows, ends = response_ends(segments)
    assert rows.tolist() == [0, 1, 2, 3, 2, 3] and ends.tolist() == [2, 4, 2, 2, 4, 3]


def test_response_logps_equal_full_logits_computation(hybrid, tokenizer, harmless_pairs):
    batch = batch_for(tokenizer, harmless_pairs[:3])
    hybrid.logprob_chunk_size = 7  # many chunks
    with torch.no_grad():
        out = hybrid(batch["input_ids"], batch["segment_ids"])
        logits = hybrid.causal_lm(input_ids=batch["input_ids"], attention_mask=padding_mask(batch)).logits
    token_logps = F.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    response_mask = batch["segment_ids"][:, 1:] == RESPONSE
    expected = (token_logps * response_mask).sum(1)
    torch.testing.assert_close(out.logps, expected, rtol=1e-5, atol=1e-4)
    assert out.token_counts.tolist() == response_mask.sum(1).tolist()


def test_logprob_chunk_keeps_logits_within_budget():
    # 64 MiB of fp32 logits: 2**26 / (4 * 49152) = 341.3 tokens for SmolLM2's vocabulary
    assert logprob_chunk_tokens(49152) == 341
    assert logprob_chunk_tokens(32000) == 524
    assert logprob_chunk_tokens(10**9) == 16  # never below 16 tokens


def test_token_logps_equal_log_softmax_in_value_and_gradient():
    torch.manual_seed(0)
    leaf = torch.randn(10, 33, dtype=torch.float64, requires_grad=True)
    targets, weights = torch.randint(0, 33, (10,)), torch.randn(10, dtype=torch.float64)
    expected = F.log_softmax(leaf, -1).gather(-1, targets[:, None]).squeeze(-1)
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), leaf)
    ours = TokenLogps.apply(leaf * 1, targets, 3)  # log-sum-exp over chunks of 3, 3, 3 and 1 rows
    (grad,) = torch.autograd.grad((ours * weights).sum(), leaf, retain_graph=True)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="runs once per forward"):  # its logits became the gradient
        ours.sum().backward()


def test_disable_dropout_zeroes_backbone_dropout_but_not_lora(tokenizer, tiny_llama):
    causal_lm = tiny_llama(len(tokenizer), num_hidden_layers=1, attention_dropout=0.3)
    causal_lm.model.layers[0].mlp.act_fn = torch.nn.Sequential(
        causal_lm.model.layers[0].mlp.act_fn, torch.nn.Dropout(0.2)
    )
    model = HybridRewardModel.from_causal_lm(causal_lm, LoraSettings(r=4, alpha=8, dropout=0.1))
    model.disable_dropout()
    attention = model.causal_lm.model.layers[0].self_attn
    assert attention.attention_dropout == 0.0
    assert model.causal_lm.model.layers[0].mlp.act_fn[1].p == 0.0
    assert attention.q_proj.lora_dropout["default"].p == 0.1


def test_rewards_do_not_depend_on_padding_side(hybrid, tokenizer, harmless_pairs):
    right = batch_for(tokenizer, harmless_pairs[:4], "right")
    left = batch_for(tokenizer, harmless_pairs[:4], "left")
    assert not torch.equal(right["input_ids"], left["input_ids"])
    with torch.no_grad():
        out_right = hybrid(**model_inputs(right))
        out_left = hybrid(**model_inputs(left))
    torch.testing.assert_close(out_right.rewards, out_left.rewards, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_right.logps, out_left.logps, rtol=1e-4, atol=1e-3)


def model_inputs(batch):
    return {
        "input_ids": batch["input_ids"],
        "segment_ids": batch["segment_ids"],
        "position_ids": batch.get("position_ids"),
    }


def _grads(model, method, tokenizer, pairs):
    batch = batch_for(tokenizer, pairs)
    objective = HafObjective(method)
    out = model(**model_inputs(batch), with_logps=objective.trains_policy)
    reference = out.logps.detach() - 0.5 if out.logps is not None else None
    loss, _ = objective(out.rewards, out.logps, out.token_counts, reference)
    model.zero_grad()
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}


def test_gradients_reach_backbone_from_both_heads_in_haf(hybrid, tokenizer, harmless_pairs):
    grads = _grads(hybrid, "haf", tokenizer, harmless_pairs[:2])
    assert grads["score.weight"].abs().sum() > 0
    assert grads["policy.lm_head.weight"].abs().sum() > 0  # the policy loss reached the LM head
    assert grads["policy.model.layers.0.mlp.up_proj.weight"].abs().sum() > 0
    # the policy part alone moves the backbone too
    policy_only = _grads(hybrid, "dpo", tokenizer, harmless_pairs[:2])
    assert policy_only["policy.model.layers.0.mlp.up_proj.weight"].abs().sum() > 0
    assert policy_only["score.weight"] is None


def test_recomputing_logits_in_backward_gives_the_same_gradients(hybrid, tokenizer, harmless_pairs, monkeypatch):
    import hafrm.model.hybrid

    hybrid.logprob_chunk_size = 7  # many chunks
    kept = {name: g.clone() for name, g in _grads(hybrid, "haf", tokenizer, harmless_pairs[:2]).items()}
    monkeypatch.setattr(hafrm.model.hybrid, "KEPT_LOGITS_BYTES", 0)  # every chunk is recomputed in backward
    recomputed = _grads(hybrid, "haf", tokenizer, harmless_pairs[:2])
    assert kept["policy.lm_head.weight"].abs().sum() > 0
    for name, grad in kept.items():
        # one LM-head product for all tokens against 7-token chunks: the same sums in another order
        torch.testing.assert_close(recomputed[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_baseline_never_touches_the_lm_head(hybrid, tokenizer, harmless_pairs):
    grads = _grads(hybrid, "baseline", tokenizer, harmless_pairs[:2])
    assert grads["policy.lm_head.weight"] is None
    assert grads["score.weight"].abs().sum() > 0
    assert grads["policy.model.layers.0.mlp.up_proj.weight"].abs().sum() > 0


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_export_round_trip_through_sequence_classification(hybrid, tokenizer, harmless_pairs, tmp_path, padding_side):
    batch = batch_for(tokenizer, harmless_pairs[:4], padding_side)
    with torch.no_grad():
        expected = hybrid(**model_inputs(batch), with_logps=False).rewards
    hybrid.export(tmp_path, tokenizer, {"test": True})
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "reward_model").eval()
    assert loaded.config.num_labels == 1 and hasattr(loaded, "score")
    with torch.no_grad():
        rewards = loaded(input_ids=batch["input_ids"], attention_mask=padding_mask(batch)).logits[:, 0]
    torch.testing.assert_close(rewards, expected, rtol=1e-5, atol=1e-6)
    reloaded = HybridRewardModel.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**model_inputs(batch), with_logps=False).rewards, expected)


def test_lora_reference_is_unchanged_by_training(tokenizer, harmless_pairs, tmp_path, tiny_causal_lm):
    model = HybridRewardModel.from_causal_lm(tiny_causal_lm(len(tokenizer)), LoraSettings(r=4, alpha=8, dropout=0.0))
    batch = batch_for(tokenizer, harmless_pairs[:2])
    before = model.reference_logps(batch["input_ids"], batch["segment_ids"])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    objective = HafObjective("haf")
    for _ in range(3):
        out = model(**model_inputs(batch))
        loss, _ = objective(out.rewards, out.logps, out.token_counts, before)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        policy_now = model(**model_inputs(batch)).logps
    after = model.reference_logps(batch["input_ids"], batch["segment_ids"])
    assert not torch.allclose(policy_now, before)  # the policy moved...
    torch.testing.assert_close(after, before)  # ...the adapter-disabled reference did not
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n == "score.weight" for n in trainable)


def test_lora_export_merges_and_saves_adapter(tokenizer, harmless_pairs, tmp_path, tiny_causal_lm):
    model = HybridRewardModel.from_causal_lm(tiny_causal_lm(len(tokenizer)), LoraSettings(r=4, alpha=8, dropout=0.0))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # make the adapter non-trivial
    batch = batch_for(tokenizer, harmless_pairs[:2])
    with torch.no_grad():
        expected = model(**model_inputs(batch))
    model.export(tmp_path, tokenizer, {})
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "reward_model").eval()
    with torch.no_grad():
        rewards = classifier(input_ids=batch["input_ids"], attention_mask=padding_mask(batch)).logits[:, 0]
        reloaded = HybridRewardModel.from_pretrained(tmp_path)(**model_inputs(batch))
    torch.testing.assert_close(rewards, expected.rewards, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(reloaded.logps, expected.logps, rtol=1e-4, atol=1e-3)


@pytest.fixture(params=["sdpa", "eager"])
def attention(request):
    return request.param


def _pair_outputs(model, tokenizer, pairs, share_prompt, method="haf"):
    """Rewards, log-probs, counts, loss and gradients of one batch in one layout."""
    batch = batch_for(tokenizer, pairs, share_prompt=share_prompt, max_length=128)
    objective = HafObjective(method)
    out = model(**model_inputs(batch))
    reference = torch.linspace(-60.0, -40.0, out.logps.shape[0])
    loss, _ = objective(out.rewards, out.logps, out.token_counts, reference)
    model.zero_grad()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out, loss.detach(), grads


def test_prompt_sharing_gives_the_same_rewards_logps_losses_and_gradients(
    tokenizer, harmless_pairs, attention, tiny_causal_lm
):
    causal_lm = tiny_causal_lm(len(tokenizer))
    causal_lm.config._attn_implementation = attention
    model = HybridRewardModel.from_causal_lm(causal_lm)
    pairs = harmless_pairs[:3] + [
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "chosen": "A much longer answer than the other one.",
            "rejected": "\n\nNo.",
        }
    ]
    shared_batch = batch_for(tokenizer, pairs, share_prompt=True, max_length=128)
    separate_batch = batch_for(tokenizer, pairs, share_prompt=False, max_length=128)
    assert shared_batch["input_ids"].numel() < separate_batch["input_ids"].numel()  # the prompt is there once
    shared, shared_loss, shared_grads = _pair_outputs(model, tokenizer, pairs, share_prompt=True)
    separate, separate_loss, separate_grads = _pair_outputs(model, tokenizer, pairs, share_prompt=False)
    torch.testing.assert_close(shared.rewards, separate.rewards, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared.logps, separate.logps, rtol=1e-5, atol=1e-4)
    assert shared.token_counts.tolist() == separate.token_counts.tolist()
    torch.testing.assert_close(shared_loss, separate_loss, rtol=1e-5, atol=1e-6)
    assert shared_grads.keys() == separate_grads.keys()
    for name in shared_grads:
        # Each layout sums a parameter's gradient over its tokens in another order. The tied embedding / LM head sums
        # the most terms (every position, every logit), with cancellation: one of its 1.6M entries differed by
        # 1.3e-5 of the largest entry on torch 2.13 + transformers 5.24. A wrong mask moves entries by their own size.
        scale = separate_grads[name].abs().max().item()
        torch.testing.assert_close(shared_grads[name], separate_grads[name], rtol=1e-4, atol=3e-5 * scale, msg=name)


def test_rejected_tokens_never_see_the_chosen_response(tokenizer, harmless_pairs, tiny_causal_lm):
    model = HybridRewardModel.from_causal_lm(tiny_causal_lm(len(tokenizer))).eval()
    pair = dict(harmless_pairs[0])
    other = {**pair, "chosen": pair["chosen"] + " Something else entirely."}
    with torch.no_grad():
        first = model(**model_inputs(batch_for(tokenizer, [pair], share_prompt=True, max_length=1024)))
        second = model(**model_inputs(batch_for(tokenizer, [other], share_prompt=True, max_length=1024)))
    assert not torch.allclose(first.rewards[0], second.rewards[0])  # the chosen response changed...
    torch.testing.assert_close(first.rewards[1], second.rewards[1])  # ...the rejected one's reward did not
    torch.testing.assert_close(first.logps[1], second.logps[1])


def test_flex_attention_takes_the_block_mask(tokenizer, harmless_pairs, tiny_causal_lm, fresh_compiler):
    """flex_attention gets a BlockMask built from the same rule (compiled on first use: ~20 s on CPU)."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    causal_lm = tiny_causal_lm(len(tokenizer))
    model = HybridRewardModel.from_causal_lm(causal_lm).eval()
    separate = batch_for(tokenizer, harmless_pairs[:3], share_prompt=False)
    shared = batch_for(tokenizer, harmless_pairs[:3], share_prompt=True)
    with torch.no_grad():
        expected = model(**model_inputs(separate))
        causal_lm.config._attn_implementation = "flex_attention"
        flex = model(**model_inputs(shared))
    torch.testing.assert_close(flex.rewards, expected.rewards, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flex.logps, expected.logps, rtol=1e-5, atol=1e-4)


def test_auto_attention_is_flex_on_a_cuda_gpu_and_the_default_on_a_cpu(monkeypatch):
    from hafrm.io.pretrained import attention_request

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert attention_request("auto") is None and attention_request(None) is None
    assert attention_request("eager") == "eager"  # a named kernel is taken as given, on any device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    pytest.importorskip("torch.nn.attention.flex_attention")
    assert attention_request("auto") == "flex_attention" and attention_request("sdpa") == "sdpa"


def test_load_causal_lm_takes_the_named_kernel_and_auto_falls_back_where_flex_cannot_run(
    tiny_model_dir, monkeypatch, caplog
):
    from transformers import LlamaForCausalLM

    from hafrm.io.pretrained import load_causal_lm

    assert load_causal_lm(str(tiny_model_dir), torch.float32, "eager").config._attn_implementation == "eager"
    monkeypatch.setattr("hafrm.io.pretrained.attention_request", lambda attention: "flex_attention")  # as on a GPU
    monkeypatch.setattr(LlamaForCausalLM, "_supports_flex_attn", False)  # a family without flex attention
    with caplog.at_level("INFO", logger="hafrm.io.pretrained"):
        model = load_causal_lm(str(tiny_model_dir), torch.float32, "auto")
    assert model.config._attn_implementation == "sdpa" and "cannot run flex_attention" in caplog.text
    with pytest.raises(ValueError, match="flex_attention"):  # asked for by name: no silent substitute
        load_causal_lm(str(tiny_model_dir), torch.float32, "flex_attention")


@pytest.mark.parametrize("tie", [True, False])
def test_freeze_trunk_freezes_a_tied_lm_head_with_the_embeddings(tiny_causal_lm, tokenizer, tie, caplog):
    model = HybridRewardModel.from_causal_lm(tiny_causal_lm(len(tokenizer), tie=tie))
    with caplog.at_level("INFO", logger="hafrm.model.hybrid"):
        model.freeze_trunk(1)
    assert not model.backbone.get_input_embeddings().weight.requires_grad
    assert model.causal_lm.get_output_embeddings().weight.requires_grad is not tie
    assert ("stays frozen" in caplog.text) is tie
    assert model.score.weight.requires_grad
