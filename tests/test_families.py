"""Every model family users train gets the model's own numbers: tiny random models of each (sliding windows of 24
tokens, so the HH pairs' rows cross them) with prompt sharing against separate rows against the model's own
forward on each conversation alone, a training step's gradients, the frozen-trunk replay, LoRA's default
targets, the export read by transformers, and the start-up check that turns sharing off where it would be wrong."""

import pytest
import torch
import torch.nn.functional as F
from helpers import batch_for, padding_mask
from transformers import AutoModelForSequenceClassification

from hafrm.data.encoding import PAD, PROMPT, REJECTED, RESPONSE
from hafrm.model.hybrid import HybridRewardModel, LoraSettings, attention_windows
from hafrm.model.losses import HafObjective
from hafrm.testing import TINY_FAMILIES as FAMILIES
from hafrm.testing import TINY_WINDOW as WINDOW
from hafrm.testing import tiny_family_model

WINDOWED = {"mistral-window", "qwen2-sliding", "gemma2", "gemma3", "phi3-window", "starcoder2-window", "mixtral-window"}
EAGER_ONLY = {"gemma2"}  # transformers refuses SDPA for Gemma 2 (its attention soft-caps), and `auto` picks eager
SHORT_PAIR = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello there, friend.", "rejected": "No."}


def family_model(family: str, tokenizer, attention: str):
    return tiny_family_model(family, len(tokenizer), attention)


def attention_kernels(family):
    return ["eager"] if family in EAGER_ONLY else ["sdpa", "eager"]


CASES = [(family, attention) for family in FAMILIES for attention in attention_kernels(family)]


@pytest.fixture(scope="module")
def base_tokenizer(tokenizer):
    """The default tokenizer with its chat template removed: a base model's plain-text format."""
    plain = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None
    return plain


@pytest.fixture(scope="module")
def pairs(harmless_pairs):
    return harmless_pairs[:3] + [SHORT_PAIR]


def own_forward(causal_lm, score, ids: list[int], prompt_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth: the reward (head on the last token) and summed response log-prob of one conversation alone,
    from the model's own forward with its own mask and window."""
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        output = causal_lm(input_ids=input_ids, output_hidden_states=True)
    reward = score(output.hidden_states[-1][0, -1]).squeeze()
    token_logps = F.log_softmax(output.logits[0, :-1].float(), -1).gather(-1, input_ids[0, 1:, None]).squeeze(-1)
    return reward, token_logps[prompt_length - 1 :].sum()


def conversations(batch) -> list[tuple[list[int], int]]:
    """(ids, prompt length) of each response in the batch's order (chosen ones, then rejected), read back from
    separate rows."""
    found = []
    for ids, segments in zip(batch["input_ids"], batch["segment_ids"]):
        real = segments != PAD
        found.append((ids[real].tolist(), int((segments == PROMPT).sum())))
    return found


@pytest.mark.parametrize("template", ["chat", "base"])
@pytest.mark.parametrize("family,attention", CASES)
def test_shared_and_separate_rows_give_the_models_own_rewards_and_logps(
    family, attention, template, tokenizer, base_tokenizer, pairs
):
    encoding = tokenizer if template == "chat" else base_tokenizer
    causal_lm = family_model(family, encoding, attention)
    model = HybridRewardModel.from_causal_lm(causal_lm).eval()
    separate = batch_for(encoding, pairs)
    shared = batch_for(encoding, pairs, share_prompt=True)
    lengths = [len(ids) for ids, _ in conversations(separate)]
    if family in WINDOWED:  # the rows cross the window, and (base format) some do not: both cases are checked
        assert max(lengths) > WINDOW and (template == "chat" or min(lengths) <= WINDOW)
    truth = [own_forward(causal_lm, model.score, ids, start) for ids, start in conversations(separate)]
    expected_rewards = torch.stack([reward for reward, _ in truth])
    expected_logps = torch.stack([logp for _, logp in truth])
    with torch.no_grad():
        for batch in (separate, shared):
            out = model(batch["input_ids"], batch["segment_ids"], batch.get("position_ids"))
            torch.testing.assert_close(out.rewards, expected_rewards, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.logps, expected_logps, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_haf_step_with_shared_prompts_has_the_gradients_of_separate_rows(family, tokenizer, pairs):
    model = HybridRewardModel.from_causal_lm(family_model(family, tokenizer, attention_kernels(family)[0]))
    objective = HafObjective("haf")
    grads = []
    for share in (True, False):
        batch = batch_for(tokenizer, pairs, share_prompt=share)
        out = model(batch["input_ids"], batch["segment_ids"], batch.get("position_ids"))
        reference = torch.linspace(-60.0, -40.0, out.logps.shape[0])
        loss, _ = objective(out.rewards, out.logps, out.token_counts, reference)
        model.zero_grad()
        loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    shared, separate = grads
    assert shared.keys() == separate.keys() and len(shared) > 5
    # Summed in another order per layout, so compared relative to each tensor's largest entry. Measured on
    # 2026-12-07 (16 families x seeds 0-2, torch 2.13, transformers 5.25): at most 3.4e-5 of the scale beyond rtol,
    # in the LayerNorm biases of Starcoder2, Phi and GPT-2 (3e-5 failed there); a wrong mask is off by O(1).
    for name in shared:
        scale = separate[name].abs().max().item()
        torch.testing.assert_close(shared[name], separate[name], rtol=1e-4, atol=2e-4 * scale, msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_frozen_trunk_replay_equals_the_full_forward(family, tokenizer, pairs):
    model = HybridRewardModel.from_causal_lm(family_model(family, tokenizer, attention_kernels(family)[0])).eval()
    model.freeze_trunk(1)
    batch = batch_for(tokenizer, pairs, share_prompt=True)
    inputs = (batch["input_ids"], batch["segment_ids"], batch["position_ids"])
    with torch.no_grad():
        states = model.trunk.compute(model.hidden_states, model.backbone, *inputs)
        full = model(*inputs)
        replayed = model(*inputs, trunk_states=states)
    torch.testing.assert_close(replayed.rewards, full.rewards, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(replayed.logps, full.logps, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_default_targets_exist_in_every_layer(family, tokenizer, pairs):
    causal_lm = family_model(family, tokenizer, attention_kernels(family)[0])
    batch = batch_for(tokenizer, pairs, share_prompt=True)
    inputs = (batch["input_ids"], batch["segment_ids"], batch["position_ids"])
    plain = HybridRewardModel.from_causal_lm(causal_lm)
    with torch.no_grad():
        before = plain(*inputs).rewards
    model = HybridRewardModel.from_causal_lm(causal_lm, LoraSettings(r=4, alpha=8), score=plain.score)
    adapted = {name.split(".lora_A")[0] for name, _ in model.named_parameters() if ".lora_A." in name}
    layers = {n for n in (f".{i}." for i in range(2)) if any(n in name for name in adapted)}
    assert layers == {".0.", ".1."}, adapted  # both layers carry adapters
    with torch.no_grad():  # LoRA starts as the identity: the same rewards
        torch.testing.assert_close(model(*inputs).rewards, before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_export_reloads_as_the_familys_sequence_classifier_with_the_same_reward(family, tokenizer, pairs, tmp_path):
    attention = attention_kernels(family)[0]
    model = HybridRewardModel.from_causal_lm(family_model(family, tokenizer, attention)).eval()
    batch = batch_for(tokenizer, pairs)
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["segment_ids"]).rewards
    model.export(tmp_path, tokenizer, {"family": family}, save_policy=False)
    classifier = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "reward_model", attn_implementation=attention
    ).eval()
    family_prefix = FAMILIES[family][0].removesuffix("Config")
    assert type(classifier).__name__ == f"{family_prefix}ForSequenceClassification"
    with torch.no_grad():
        rewards = classifier(input_ids=batch["input_ids"], attention_mask=padding_mask(batch)).logits[:, 0]
    torch.testing.assert_close(rewards, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(WINDOWED))
def test_windowed_families_keep_prompt_sharing_through_the_start_up_check(family, tokenizer):
    model = HybridRewardModel.from_causal_lm(family_model(family, tokenizer, attention_kernels(family)[0]))
    assert WINDOW in attention_windows(model.config).values()
    assert model.check_prompt_sharing()


def test_the_start_up_check_turns_sharing_off_where_the_shared_layout_is_wrong(tokenizer, monkeypatch, caplog):
    """A mask without the window (hafrm's rule before it counted windows in positions) is what the check catches."""
    model = HybridRewardModel.from_causal_lm(family_model("mistral-window", tokenizer, "sdpa"))
    monkeypatch.setattr(
        "hafrm.model.hybrid.attention_windows", lambda config: {"sliding_attention": None}
    )  # as a model whose window hafrm does not know
    with caplog.at_level("WARNING", logger="hafrm.model.hybrid"):
        assert not model.check_prompt_sharing()
    assert "separate rows" in caplog.text and "differ" in caplog.text
    assert not model.shares_prompts


def test_the_start_up_check_turns_sharing_off_where_the_model_refuses_the_mask(tokenizer, monkeypatch, caplog):
    model = HybridRewardModel.from_causal_lm(family_model("llama", tokenizer, "sdpa"))
    monkeypatch.setattr(
        "hafrm.model.hybrid.attention_windows", lambda config: {"full_attention": None, "sliding_attention": 4}
    )  # a {kind: mask} mapping a Llama does not take
    with caplog.at_level("WARNING", logger="hafrm.model.hybrid"):
        assert not model.check_prompt_sharing()
    assert "fails" in caplog.text


def test_unknown_layer_kinds_are_computed_as_separate_rows(tokenizer, caplog):
    model = HybridRewardModel.from_causal_lm(family_model("qwen2-sliding", tokenizer, "sdpa"))
    model.config.layer_types = ["chunked_attention", "full_attention"]
    with caplog.at_level("WARNING", logger="hafrm.model.hybrid"):
        assert not model.check_prompt_sharing()
    assert "chunked_attention" in caplog.text


def test_rejected_positions_see_the_prompt_within_the_window_counted_in_positions():
    from hafrm.model.hybrid import allowed_keys

    # prompt of 3, chosen of 2, rejected of 2: rejected positions 3 and 4 sit at row indices 5 and 6
    segments = torch.tensor([[PROMPT] * 3 + [RESPONSE] * 2 + [REJECTED] * 2])
    positions = torch.tensor([[0, 1, 2, 3, 4, 3, 4]])
    allowed = allowed_keys(segments, positions, window=3)[0]
    assert allowed[6].nonzero().squeeze(1).tolist() == [2, 5, 6]  # positions 2, 3, 4: the last three
    assert allowed[4].nonzero().squeeze(1).tolist() == [2, 3, 4]
    assert allowed_keys(segments, positions, window=None)[0, 6].nonzero().squeeze(1).tolist() == [0, 1, 2, 5, 6]


@pytest.mark.parametrize("family", ["mistral-window", "qwen2-sliding", "gemma2"])
def test_flex_attention_takes_the_windowed_block_masks(family, tokenizer, pairs, fresh_compiler):
    """flex_attention (compiled on first use: seconds on a CPU) reads the same per-kind masks as SDPA and eager."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    causal_lm = family_model(family, tokenizer, "eager")
    model = HybridRewardModel.from_causal_lm(causal_lm).eval()
    separate = batch_for(tokenizer, pairs)
    shared = batch_for(tokenizer, pairs, share_prompt=True)
    with torch.no_grad():
        expected = model(separate["input_ids"], separate["segment_ids"])
        causal_lm.config._attn_implementation = "flex_attention"
        flex = model(shared["input_ids"], shared["segment_ids"], shared["position_ids"])
    torch.testing.assert_close(flex.rewards, expected.rewards, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flex.logps, expected.logps, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_attention_on_a_cpu_is_a_kernel_that_takes_the_block_mask(family, tokenizer, tmp_path, monkeypatch):
    """`auto` leaves transformers' default on a CPU (flex attention on a GPU): SDPA, or eager for Gemma 2."""
    from hafrm.io.pretrained import load_causal_lm
    from hafrm.model.hybrid import SHARED_PROMPT_ATTENTION

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    family_model(family, tokenizer, "eager").save_pretrained(tmp_path)
    picked = load_causal_lm(str(tmp_path), torch.float32, "auto").config._attn_implementation
    assert picked == ("eager" if family in EAGER_ONLY else "sdpa") and picked in SHARED_PROMPT_ATTENTION


def test_a_window_wider_than_every_position_is_the_whole_past():
    """Phi-3.5-mini sets sliding_window 262,144 with max_position_embeddings 131,072: no row can reach it, and the
    start-up check must not build a 393k-token pair for it."""
    from transformers import Phi3Config

    config = Phi3Config(sliding_window=262144, max_position_embeddings=131072)
    assert attention_windows(config) == {"full_attention": None}
    assert attention_windows(Phi3Config(sliding_window=2047, max_position_embeddings=4096)) == {
        "sliding_attention": 2047
    }
