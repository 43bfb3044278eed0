"""One hafrm training step under torch's FSDP2 (`fully_shard`), run by tests/test_distributed.py: under torchrun with
2 CPU processes (gloo) each rank takes half of the pairs; alone, one process takes them all. Both write the full
state dict after one SGD step (lr 1, so the step is the gradient), gathered from the shards, so the test can
compare them.

    python tests/fsdp2_step.py MODE METHOD OUT.safetensors [EXPORT_DIR]     (MODE: full | frozen | lora)

With HAFRM_TEST_RESUME=1 the step starts from a trainable state loaded as HafTrainer resumes a checkpoint (full
tensors, which an FSDP2 model takes as shards) instead of the initial one.

With EXPORT_DIR the stepped model is then exported as `hafrm train` exports it (pipeline.exportable_model: under
FSDP2 every rank gathers, rank 0 loads the full state into a rebuilt model and writes the folders).
"""

import os
import sys

import torch
import torch.distributed as dist
from helpers import batch_for
from safetensors.torch import save_file

from hafrm.data import load_pairs
from hafrm.io.defaults import DEFAULT_TRAIN_DATA, default_model_path
from hafrm.io.pretrained import load_tokenizer
from hafrm.model import HafObjective, HybridRewardModel, LoraSettings
from hafrm.model.trunk import decoder_layers
from hafrm.testing import tiny_llama

PAIRS = 4


def build(mode: str, vocab_size: int) -> HybridRewardModel:
    model = HybridRewardModel.from_causal_lm(
        tiny_llama(vocab_size), LoraSettings(r=4, alpha=8) if mode == "lora" else None
    )
    if mode == "frozen":
        model.freeze_trunk(1)
    return model


def shard(model: HybridRewardModel) -> None:
    """FSDP2 as accelerate's TRANSFORMER_BASED_WRAP applies it: every decoder layer, then the root (embeddings, LM
    head and the reward head, which sit outside the layers)."""
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model.backbone):
        fully_shard(layer)
    fully_shard(model)


def full_state(model: HybridRewardModel) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not dist.is_initialized():
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def main(mode: str, method: str, out: str, export_dir: str | None = None) -> None:
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    tokenizer = load_tokenizer(str(default_model_path()))
    pairs, _ = load_pairs(str(DEFAULT_TRAIN_DATA), limit=PAIRS)
    mine = pairs[rank * PAIRS // world : (rank + 1) * PAIRS // world]
    model = build(mode, len(tokenizer))
    resumed = None
    if os.environ.get("HAFRM_TEST_RESUME"):  # a trainable state that is not the initial one, as a checkpoint holds
        generator = torch.Generator().manual_seed(1)
        resumed = {
            k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in model.trainable_state_dict().items()
        }
    if distributed:
        shard(model)
    if resumed is not None:
        model.load_trainable_state_dict(resumed)  # full tensors into the shards, as HafTrainer resumes
    # SGD: the step is the gradient itself, which AdamW's first step would blow up to +-lr where it is near zero
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    batch = batch_for(tokenizer, mine, share_prompt=True)
    out_ = model(batch["input_ids"], batch["segment_ids"], batch["position_ids"])
    reference = out_.logps.detach() - 1.0  # a fixed reference: the policy loss has a gradient at the first step
    loss, _ = HafObjective(method)(out_.rewards, out_.logps, out_.token_counts, reference)
    loss.backward()  # FSDP2 averages the gradients over ranks: the mean over all pairs, as one process has it
    optimizer.step()
    state = full_state(model)
    if rank == 0:
        save_file({k: v.contiguous() for k, v in state.items()}, out)
    if export_dir:
        from hafrm.training.pipeline import exportable_model

        with exportable_model(model, "fsdp" if distributed else None, lambda: build(mode, len(tokenizer))) as whole:
            if rank == 0:
                whole.export(export_dir, tokenizer, {"config": {"method": method}})
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
