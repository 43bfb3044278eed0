"""Reference-policy log-probs computed once before training and cached on disk.

With the reference log-probs stored next to each pair, training needs neither a second model copy
nor a second forward pass. The cache key covers the model weights, the tokenized data and the
sequence layout, so a change to any of them computes afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging

import torch
from safetensors.torch import load_file, save_file

from hafrm.data.encoding import batches_by_length
from hafrm.io.atomic import write_atomically
from hafrm.io.defaults import cache_dir
from hafrm.model.trunk import TrunkStore

logger = logging.getLogger(__name__)


def model_fingerprint(model: torch.nn.Module) -> str:
    """A cheap content hash: config (where the module has one) plus the first values of every parameter tensor."""
    config = getattr(model, "config", None)
    digest = hashlib.sha256(config.to_json_string(use_diff=False).encode() if config is not None else b"")
    for name, parameter in model.named_parameters():
        digest.update(name.encode())
        digest.update(parameter.detach().flatten()[:64].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:20]


def data_fingerprint(dataset) -> str:
    """A content hash of the tokenized pairs (the same in every process and every run)."""
    digest = hashlib.sha256()
    for column in ("chosen_input_ids", "rejected_input_ids", "prompt_length"):
        digest.update(json.dumps(list(dataset[column])).encode())
    return digest.hexdigest()


# The rule the shared-prompt block mask follows, in every cache key of values computed under it: entries from before
# sliding windows were counted in positions (2026-12-04) were wrong for windowed models and go unused.
SHARED_MASK = "shared-prompt mask: sliding windows by position"


def cache_key(*parts) -> str:
    """Cache file name from fingerprints: modules (their weights) and tokenized data sets, plus any plain values."""
    values = [
        model_fingerprint(p)
        if isinstance(p, torch.nn.Module)
        else data_fingerprint(p)
        if hasattr(p, "column_names")
        else p
        for p in parts
    ]
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:24]


@torch.no_grad()
def compute_reference_logps(
    model, dataset, collator, batch_size: int, device: torch.device, description: str
) -> torch.Tensor:
    """Summed response log-probs of the current policy for chosen then rejected, shape (len(dataset), 2)."""
    from hafrm.model.hybrid import eval_mode

    logps = torch.zeros(len(dataset), 2)
    with eval_mode(model):
        for indices, batch in batches_by_length(dataset, collator, batch_size, device, description):
            out = model(
                batch["input_ids"],
                batch["segment_ids"],
                batch.get("position_ids"),
                with_logps=True,
                trunk_states=batch.get("trunk_states"),
            )
            logps[indices] = torch.stack(out.logps.float().cpu().chunk(2), dim=1)
    return logps


def add_reference_logps(model, dataset, collator, batch_size: int, device: torch.device, name: str):
    """Attach reference_chosen_logps / reference_rejected_logps columns, from the disk cache when present."""
    from hafrm.model.hybrid import post_head_step

    # The policy alone: the reward head's seed does not change these. Before 8be1969 the step some families take
    # after the LM head was left out of their log-probs, so their keys name that step and old entries go unused.
    step = post_head_step(model.causal_lm)
    key = cache_key(model.causal_lm, dataset, SHARED_MASK, *([list(step)] if step else []))
    path = cache_dir() / "reference_logps" / f"{key}.safetensors"
    if path.exists():
        logger.info("Reference log-probs for %s read from cache %s", name, path)
        logps = load_file(path)["logps"]
    else:
        logps = compute_reference_logps(model, dataset, collator, batch_size, device, f"reference log-probs ({name})")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda temporary: save_file({"logps": logps.contiguous()}, temporary))
    if logps.shape[0] != len(dataset):
        raise RuntimeError(f"reference cache {path} has {logps.shape[0]} rows for {len(dataset)} pairs; delete it")
    dataset = dataset.add_column("reference_chosen_logps", logps[:, 0].tolist())
    return dataset.add_column("reference_rejected_logps", logps[:, 1].tolist())


def compute_trunk_states(model, dataset, collator, batch_size: int, device: torch.device) -> TrunkStore:
    """Trunk states of every pair of a data set, in its order, each pair's row without padding. Pairs are run in
    batches of similar length (little padding) and put back in order."""
    from hafrm.model.hybrid import eval_mode

    pieces: list[torch.Tensor | None] = [None] * len(dataset)
    with eval_mode(model):
        for indices, batch in batches_by_length(dataset, collator, batch_size, device, "frozen trunk"):
            states = model.trunk.compute(
                model.hidden_states, model.backbone, batch["input_ids"], batch["segment_ids"], batch.get("position_ids")
            )
            for index, row, row_segments in zip(indices, states.float().cpu(), batch["segment_ids"].cpu()):
                pieces[index] = row[: int((row_segments != 0).sum())].clone()
    lengths = [len(p) for p in pieces]
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.long), 0)
    return TrunkStore(torch.cat(pieces), offsets)


def cached_trunk_states(model, datasets: list, collator, batch_size: int, device: torch.device) -> TrunkStore:
    """Trunk states of the given data sets, one store with pair indices running through them in order, read from
    the disk cache when the same frozen weights have seen the same pairs in the same layout."""
    key = cache_key(
        model.trunk.modules,
        model.config.to_json_string(use_diff=False),
        model.trunk.num_layers,
        collator.share_prompt,
        SHARED_MASK,
        *datasets,
    )
    path = cache_dir() / "trunk" / f"{key}.safetensors"
    if path.exists():
        logger.info("Frozen-trunk states read from cache %s", path)
        tensors = load_file(path)
        return TrunkStore(tensors["states"], tensors["offsets"])
    stores = [compute_trunk_states(model, d, collator, batch_size, device) for d in datasets]
    offsets = torch.cat(
        [stores[0].offsets]
        + [s.offsets[1:] + sum(len(t.states) for t in stores[:i]) for i, s in enumerate(stores) if i > 0]
    )
    store = TrunkStore(torch.cat([s.states for s in stores]), offsets)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(
        path, lambda temporary: save_file({"states": store.states.contiguous(), "offsets": store.offsets}, temporary)
    )
    return store
