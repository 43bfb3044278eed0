"""`HafTrainer.save_model()` called by a user writes the folders `hafrm train` exports (issue 46, item 6)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainingArguments

from hafrm.eval.scoring import RewardScorer
from hafrm.model.hybrid import LoraSettings
from hafrm.training.trainer import HafTrainer


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_save_model_leaves_a_loadable_reward_model_and_training_goes_on(lora, tiny_model_dir, harmless_pairs, tmp_path):
    from hafrm.io.pretrained import load_tokenizer
    from hafrm.model.hybrid import HybridRewardModel

    tokenizer = load_tokenizer(str(tiny_model_dir))
    causal_lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = HybridRewardModel.from_causal_lm(causal_lm, LoraSettings(r=4, alpha=8, dropout=0.0) if lora else None)
    args = TrainingArguments(
        str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=2, report_to="none", use_cpu=True
    )
    trainer = HafTrainer(model=model, args=args, train_dataset=harmless_pairs[:4], processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path / "final" / "reward_model").eval()
    scorer = RewardScorer(tmp_path / "final")
    ids = scorer.encode("How do I bake bread?", "Knead and bake.")
    with torch.no_grad():
        reward = classifier(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert reward == pytest.approx(scorer.score(["How do I bake bread?"], ["Knead and bake."])[0], rel=1e-5)
    assert trainer.model.is_peft == lora  # the trained model is left as it was
    trainer.args.max_steps = 2
    trainer.train(resume_from_checkpoint=False)  # and can train on
