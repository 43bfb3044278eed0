"""Freeze tuning with a cached trunk: the embeddings and the bottom N layers are frozen, so their output for a
given pair never changes; it is computed once per data set and model, kept on disk (content-hash key, like the
reference log-probs) and replayed, so training runs only the top layers and the heads.

The frozen layers keep their place and parameter names (checkpoints and exports are unchanged); while a batch
carries cached trunk states, the first frozen layer returns them and the others pass them through, so the model's
own forward (masks, rotary embeddings) runs as always. A trunk is reused across epochs, methods, seeds and
evaluations: its key covers only the frozen weights, the tokenized pairs and the row layout.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
from torch import nn

logger = logging.getLogger(__name__)


class _TrunkReached(Exception):
    """Raised by the last frozen layer while the trunk is computed, so the layers above never run."""


def decoder_layers(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's stack of decoder layers, whatever the family calls it (`layers` in Llama, Mistral, Gemma,
    Phi; `h` in GPT-2 and Falcon): its child list of as many modules as the config has layers."""
    count = backbone.config.get_text_config().num_hidden_layers
    for child in backbone.children():
        if isinstance(child, nn.ModuleList) and len(child) == count:
            return child
    raise ValueError(f"{type(backbone).__name__} has no list of {count} decoder layers to freeze")


class FrozenTrunk:
    """The embeddings and bottom `num_layers` layers of a backbone, frozen, with a replay slot."""

    def __init__(self, backbone: nn.Module, num_layers: int):
        layers = decoder_layers(backbone)
        if not 0 < num_layers < len(layers):
            raise ValueError(
                f"freeze_layers must be between 1 and {len(layers) - 1} (the model has {len(layers)} layers), "
                f"got {num_layers}"
            )
        self.backbone, self.num_layers = backbone, num_layers
        self.modules = nn.ModuleList([backbone.get_input_embeddings(), *layers[:num_layers]])
        self.modules.requires_grad_(False)
        self.replayed: torch.Tensor | None = None
        self.capture = False
        for index, layer in enumerate(layers[:num_layers]):
            layer.forward = self._replaying_forward(layer.forward, first=index == 0, last=index == num_layers - 1)

    def _replaying_forward(self, real_forward, first: bool, last: bool):
        def forward(hidden_states, *args, **kwargs):
            if self.replayed is not None:
                return self.replayed if first else hidden_states
            output = real_forward(hidden_states, *args, **kwargs)
            if last and self.capture:
                raise _TrunkReached(output)
            return output

        return forward

    @contextmanager
    def replaying(self, hidden: torch.Tensor | None):
        """Within this block the frozen layers output `hidden` (B, T, H) instead of computing it."""
        self.replayed = hidden
        try:
            yield
        finally:
            self.replayed = None

    @torch.no_grad()
    def compute(self, run_backbone, *inputs) -> torch.Tensor:
        """(B, T, H) output of the last frozen layer; `run_backbone(*inputs)` runs the backbone on the batch."""
        self.capture = True
        try:
            run_backbone(*inputs)
        except _TrunkReached as reached:
            return reached.args[0]
        finally:
            self.capture = False
        raise RuntimeError("the backbone never reached its last frozen layer")


class TrunkStore:
    """Cached trunk states of every pair, (tokens, H) rows one pair after another; pair i is rows
    offsets[i]:offsets[i+1]."""

    def __init__(self, states: torch.Tensor, offsets: torch.Tensor):
        self.states, self.offsets = states, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def pair(self, index: int) -> torch.Tensor:
        return self.states[self.offsets[index] : self.offsets[index + 1]]

    def batch(self, indices: list[int], width: int) -> torch.Tensor:
        """(B, width, H) states of these pairs' rows, right-padded with zeros like the token rows."""
        out = self.states.new_zeros(len(indices), width, self.states.shape[1])
        for row, index in enumerate(indices):
            states = self.pair(index)
            out[row, : states.shape[0]] = states
        return out
