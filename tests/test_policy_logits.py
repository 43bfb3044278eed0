"""Response log-probs are the model's own: families that scale or soft-cap logits after the LM head (Cohere,
Granite, Gemma 2) get the same log-probs as their forward's logits give, and a model that does something hafrm
does not know is refused before training."""

import pytest
import torch
import torch.nn.functional as F
import transformers
from helpers import batch_for, padding_mask
from transformers import TrainingArguments

from hafrm.data.encoding import RESPONSE
from hafrm.model.hybrid import HybridRewardModel, check_policy_logits
from hafrm.model.losses import HafObjective
from hafrm.training.trainer import HafTrainer

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
# each family's post-head step set large enough to change every log-prob of a random model's small logits
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "cohere": ("CohereConfig", "CohereForCausalLM", {"logit_scale": 4.0}),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {"logits_scaling": 0.25}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"final_logit_softcapping": 0.05, "head_dim": 8}),
}


def family_model(name: str, vocab_size: int):
    config_class, model_class, extra = FAMILIES[name]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(vocab_size=vocab_size, pad_token_id=2, **SMALL, **extra)
    config._attn_implementation = "eager"  # Gemma 2 soft-caps attention too, which only eager does
    return getattr(transformers, model_class)(config).float().eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_response_logps_and_gradients_are_those_of_the_models_own_logits(family, tokenizer, harmless_pairs):
    causal_lm = family_model(family, len(tokenizer))
    check_policy_logits(causal_lm)  # passes: hafrm repeats this family's post-head step
    hybrid = HybridRewardModel.from_causal_lm(causal_lm)
    batch = batch_for(tokenizer, harmless_pairs[:3])
    response = batch["segment_ids"][:, 1:] == RESPONSE
    head = causal_lm.get_output_embeddings().weight

    def summed(token_logits):
        token_logps = F.log_softmax(token_logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        return (token_logps * response).sum(1)

    ours = hybrid(batch["input_ids"], batch["segment_ids"]).logps
    (our_grad,) = torch.autograd.grad(ours.sum(), head)
    expected = summed(causal_lm(input_ids=batch["input_ids"], attention_mask=padding_mask(batch)).logits)
    (expected_grad,) = torch.autograd.grad(expected.sum(), head)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(our_grad, expected_grad, rtol=1e-4, atol=1e-6)
    if family != "llama":  # the post-head step matters: the bare head's log-probs are another policy's
        with torch.no_grad():
            bare = summed(causal_lm.get_output_embeddings()(causal_lm.model(input_ids=batch["input_ids"])[0]))
        assert (bare - ours).abs().min() > 0.05


@pytest.mark.parametrize("family", FAMILIES)
def test_the_check_passes_in_bf16(family, tokenizer):
    check_policy_logits(family_model(family, len(tokenizer)).to(torch.bfloat16))


def doubled_logits(causal_lm):
    """The model with a step after its LM head that hafrm does not know."""
    plain_forward = causal_lm.forward

    def forward(*args, **kwargs):
        output = plain_forward(*args, **kwargs)
        output.logits = output.logits * 2
        return output

    causal_lm.forward = forward
    return causal_lm


def test_a_model_whose_logits_hafrm_cannot_repeat_is_refused(tokenizer, tiny_causal_lm):
    with pytest.raises(ValueError, match="LlamaForCausalLM .* turns hidden states into logits in a way hafrm does"):
        check_policy_logits(doubled_logits(tiny_causal_lm(len(tokenizer))))


def test_the_trainer_refuses_it_for_a_policy_loss_only(tokenizer, tiny_causal_lm, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="`method: baseline` trains the reward head alone"):
        HafTrainer(model=doubled_logits(tiny_causal_lm(len(tokenizer))), args=args, objective=HafObjective("haf"))
    HafTrainer(model=doubled_logits(tiny_causal_lm(len(tokenizer))), args=args, objective=HafObjective("baseline"))
