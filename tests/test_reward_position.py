"""One place where the reward is read: every path gives the same reward for the same conversation.

Two tiny models: a chat model (the default model's tokenizer and template, pad chosen among its unused special
tokens) and a base model with no chat template and no pad id anywhere (the paper's Phi-2 / Mistral-base setting,
where hafrm adds a `<|pad|>` token). Paths: training forward, export (AutoModelForSequenceClassification, pipeline),
reload, `RewardScorer` on messages, on formatted text, on rollouts ending at EOS with or without the template's
suffix and with pad strings around them, alone or in a batch, and the TRL reward function.
"""

from __future__ import annotations

import pytest
import torch
from helpers import batch_for
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast

from hafrm.data import PairCollator, PairEncoder
from hafrm.data.encoding import hh_chat_template
from hafrm.eval.scoring import RewardScorer
from hafrm.io.pretrained import PAD_FALLBACK_TOKEN, fit_embeddings, load_tokenizer
from hafrm.model.hybrid import HybridRewardModel
from hafrm.serve.rlhf import reward_function

PROMPT = [{"role": "user", "content": "How do I keep bread fresh?"}]
RESPONSES = ["Keep it in a paper bag.", "\n\nWrap it   tightly.", "  Freeze slices.", "No idea"]
TOLERANCE = dict(rtol=0, atol=1e-4)
NO_PAD_ID = dict(pad_token_id=None, bos_token_id=0, eos_token_id=1)  # a base model whose config names no pad


def base_tokenizer_folder(folder):
    """A byte-level BPE tokenizer with only <s> and </s>, which puts <s> before plain text (as Llama's and Gemma's
    base tokenizers do): no pad, no unk, no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = ["Human: How do I keep bread fresh? Assistant: Keep it in a paper bag. Wrap it tightly."] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["chat", "base"])
def exported(request, tmp_path_factory, default_model_dir, tiny_causal_lm):
    """(hybrid model as trained, its tokenizer, the export folder) for a chat model and a no-template base model."""
    if request.param == "chat":
        tokenizer = load_tokenizer(str(default_model_dir))
        causal_lm = tiny_causal_lm(len(tokenizer), **NO_PAD_ID)
    else:
        tokenizer = load_tokenizer(str(base_tokenizer_folder(tmp_path_factory.mktemp("base-tokenizer"))))
        causal_lm = tiny_causal_lm(len(tokenizer) - 1, **NO_PAD_ID)  # the model knows nothing of the added pad
        fit_embeddings(causal_lm, tokenizer)
    model = HybridRewardModel.from_causal_lm(causal_lm).eval()
    folder = tmp_path_factory.mktemp(f"export-{request.param}")
    model.export(folder, tokenizer, {"config": {"method": "baseline"}})
    return model, tokenizer, folder


def training_rewards(model, tokenizer, padding_side: str) -> torch.Tensor:
    """Rewards as training computes them: pairs (each response against the next) in one padded batch."""
    pairs = [
        {"prompt": PROMPT, "chosen": RESPONSES[i], "rejected": RESPONSES[(i + 1) % len(RESPONSES)]}
        for i in range(len(RESPONSES))
    ]
    batch = batch_for(tokenizer, pairs, padding_side, max_length=128)
    with torch.no_grad():
        return model(batch["input_ids"], batch["segment_ids"], with_logps=False).rewards[: len(RESPONSES)]


def test_pad_token_never_occurs_in_a_conversation(exported):
    _, tokenizer, _ = exported
    encoder = PairEncoder(tokenizer, 128)
    assert tokenizer.pad_token not in (tokenizer.eos_token, tokenizer.bos_token)
    assert tokenizer.pad_token_id not in encoder.tokenize(encoder.conversation_text(PROMPT, RESPONSES[0]))
    if tokenizer.chat_template == hh_chat_template(tokenizer):  # the base model
        assert tokenizer.pad_token == PAD_FALLBACK_TOKEN


def test_training_export_and_reload_read_the_same_token(exported):
    model, tokenizer, folder = exported
    expected = training_rewards(model, tokenizer, "right")
    torch.testing.assert_close(training_rewards(model, tokenizer, "left"), expected, **TOLERANCE)
    reloaded = HybridRewardModel.from_pretrained(folder).eval()
    torch.testing.assert_close(
        training_rewards(reloaded, load_tokenizer(str(folder / "policy")), "right"), expected, **TOLERANCE
    )
    classifier = AutoModelForSequenceClassification.from_pretrained(folder / "reward_model").eval()
    assert classifier.config.problem_type == "regression"
    assert "Method: `baseline`" in (folder / "reward_model" / "README.md").read_text()
    encoder = PairEncoder(tokenizer, 128)
    for side in ("right", "left"):
        batch = PairCollator(tokenizer.pad_token_id, side, share_prompt=False)(
            [
                {
                    "chosen_input_ids": encoder.encode_single(PROMPT, r)["input_ids"],
                    "rejected_input_ids": [1],
                    "prompt_length": 0,
                    "margin": 0.0,
                }
                for r in RESPONSES
            ]
        )
        with torch.no_grad():
            logits = classifier(input_ids=batch["input_ids"], attention_mask=(batch["segment_ids"] != 0).long()).logits[
                : len(RESPONSES), 0
            ]
        torch.testing.assert_close(logits, expected, **TOLERANCE)


def test_every_scoring_path_gives_the_training_reward(exported):
    model, tokenizer, folder = exported
    expected = training_rewards(model, tokenizer, "right").tolist()
    scorer = RewardScorer(folder, max_length=128)
    encoder = scorer.encoder
    assert encoder.format_start == tokenizer.bos_token  # both formats start with it: the case above is not empty
    texts = [encoder.conversation_text(PROMPT, r) for r in RESPONSES]
    prompt_text = encoder.prompt_text(PROMPT)
    eos, pad = tokenizer.eos_token, tokenizer.pad_token
    at_eos = [
        t[: t.rindex(eos) + len(eos)] for t in texts
    ]  # a rollout that stops at EOS, without the template's suffix
    generated = [
        t[len(prompt_text) :].removesuffix(encoder.turn_end) for t in texts
    ]  # what a policy writes after the prompt
    variants = {
        "messages": scorer.score([PROMPT] * len(RESPONSES), RESPONSES),
        "messages one by one": [scorer.score([PROMPT], [r], batch_size=1)[0] for r in RESPONSES],
        "formatted text": scorer.score_ids([scorer.encode_text(t) for t in texts]),
        "formatted text without its BOS": scorer.score_ids(
            [scorer.encode_text(t.removeprefix(encoder.format_start)) for t in texts]
        ),
        "rollout ending at EOS": scorer.score_ids([scorer.encode_text(t) for t in at_eos]),
        "left-padded rollout (OpenRLHF)": scorer.score_ids([scorer.encode_text(eos * 3 + t) for t in at_eos]),
        "pad strings both sides": scorer.score_ids([scorer.encode_text(pad * 2 + t + pad * 4) for t in at_eos]),
        "right-padded with EOS": scorer.score_ids([scorer.encode_text(t + eos * 3) for t in at_eos]),
        "TRL messages": reward_function(folder, max_length=128)(
            [PROMPT] * len(RESPONSES), [[{"role": "assistant", "content": r}] for r in RESPONSES]
        ),
        "TRL formatted prompt": reward_function(folder, max_length=128)([prompt_text] * len(RESPONSES), generated),
    }
    variants["TRL plain prompt"] = reward_function(folder, max_length=128)(
        [PROMPT[0]["content"]] * len(RESPONSES), RESPONSES
    )
    for name, rewards in variants.items():
        assert rewards == pytest.approx(expected, abs=1e-4), name


def test_pipeline_returns_the_raw_reward(exported):
    from transformers import pipeline

    model, tokenizer, folder = exported
    expected = training_rewards(model, tokenizer, "right")[0].item()
    text = PairEncoder(tokenizer, 128).conversation_text(PROMPT, RESPONSES[0])
    classify = pipeline("text-classification", model=str(folder / "reward_model"), device="cpu")
    assert classify(text, add_special_tokens=False)[0]["score"] == pytest.approx(expected, abs=1e-4)


def test_the_model_cards_example_runs_as_written_and_gives_the_training_reward(exported):
    """Every export carries its format: the card's code, PATH replaced, formats as training did (for the base model
    through the HH chat template its export carries, BOS included) and reads the training reward."""
    model, tokenizer, folder = exported
    card = (folder / "reward_model" / "README.md").read_text()
    code = card.split("```python\n")[1].split("```")[0].replace('"PATH"', repr(str(folder / "reward_model")))
    namespace: dict = {}
    exec(code, namespace)
    pair = [{"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello!", "rejected": "No."}]
    batch = batch_for(tokenizer, pair, "right", max_length=128)
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["segment_ids"], with_logps=False).rewards[0].item()
    assert namespace["reward"] == pytest.approx(expected, abs=1e-4)
    if tokenizer.bos_token == "<s>":  # the base model: HH text after the BOS its tokenizer adds to plain text
        assert namespace["text"] == "<s>\n\nHuman: Hi\n\nAssistant: Hello!</s>"


@pytest.mark.parametrize("response", RESPONSES + ["\nHello", "   spaced out", " x"])
def test_ids_equal_the_chat_template_on_the_whole_conversation(tokenizer, response):
    encoder = PairEncoder(tokenizer, 512)
    whole = tokenizer.apply_chat_template(PROMPT + [{"role": "assistant", "content": response}], tokenize=False)
    expected = tokenizer(whole, add_special_tokens=False)["input_ids"]
    encoded = encoder.encode_single(PROMPT, response)
    assert encoded["input_ids"] == expected
    prompt_ids = tokenizer(encoder.prompt_text(PROMPT), add_special_tokens=False)["input_ids"]
    assert expected[: encoded["prompt_length"]] == prompt_ids[: encoded["prompt_length"]]


def test_pair_shares_a_token_prefix_when_a_response_merges_across_the_boundary(tokenizer):
    encoded = PairEncoder(tokenizer, 512).encode_pair({"prompt": PROMPT, "chosen": "\n\nWrap it.", "rejected": "Bag."})
    length = encoded["prompt_length"]
    assert encoded["chosen_input_ids"][:length] == encoded["rejected_input_ids"][:length]
    for key, response in (("chosen_input_ids", "\n\nWrap it."), ("rejected_input_ids", "Bag.")):
        whole = tokenizer.apply_chat_template(PROMPT + [{"role": "assistant", "content": response}], tokenize=False)
        assert encoded[key] == tokenizer(whole, add_special_tokens=False)["input_ids"]


def test_rollout_normalisation(tokenizer):
    encoder = PairEncoder(tokenizer, 512)
    full = encoder.conversation_text(PROMPT, "Hi")
    assert encoder.turn_end == "<|im_end|>\n"
    assert encoder.normalise_rollout(full) == full
    assert encoder.normalise_rollout(full.removesuffix("\n")) == full
    assert encoder.normalise_rollout("<|im_end|><|im_end|>" + full + "<|im_end|>") == full
    truncated = full.removesuffix("<|im_end|>\n")
    assert encoder.normalise_rollout(truncated) == truncated  # cut off before EOS: scored as given
    assert encoder.normalise_rollout(truncated, finished=True) == full
    assert encoder.is_formatted(encoder.prompt_text(PROMPT)) and not encoder.is_formatted("How are you?")


def test_the_hh_template_writes_what_hafrms_plain_hh_text_was(tokenizer):
    """The HH chat template a base model is given writes the text hafrm wrote for it before it had one: turns as
    `\\n\\nRole: text`, one space before the answer, EOS after it only, an earlier answer without EOS."""
    plain = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None
    encoder = PairEncoder(plain, 512)
    eos = plain.eos_token
    prompt = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    assert encoder.prompt_text(prompt) == "\n\nSystem: Be kind.\n\nHuman: Hi\n\nAssistant: Hello\n\nAssistant:"
    assert encoder.conversation_text(prompt + [{"role": "user", "content": "Bye"}], "Bye!") == (
        f"\n\nSystem: Be kind.\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant: Bye!{eos}"
    )
    assert encoder.conversation_text(prompt, "More") == encoder.prompt_text(prompt) + f" More{eos}"
