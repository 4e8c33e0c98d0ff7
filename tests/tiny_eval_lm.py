"""The small causal LM that test_evaluation scores, in a module of its own: ``python -m flowhn.evaluate``
rebuilds it from a checkpoint whose ``model._target_`` is ``tiny_eval_lm.build_tiny``, and this module,
unlike test_evaluation (Lightning, tokenizers, lm-eval), costs that process no imports but torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyLM(nn.Module):
    """Small causal LM: embedding -> causal convolution over the last 4 tokens -> vocabulary logits."""

    split_ratio = None

    def __init__(self, vocab: int, dim: int = 24, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        self.conv = nn.Conv1d(dim, dim, kernel_size=4)
        self.head = nn.Linear(dim, vocab)

    def mix(self, x):
        # Left padding by kernel-1 keeps position t from seeing anything after t.
        return x + torch.tanh(self.conv(F.pad(x.transpose(1, 2), (3, 0)))).transpose(1, 2)

    def forward(self, input_ids):
        return self.head(self.mix(self.embed(input_ids)))


def build_tiny(cfg):
    """A ``model._target_`` builder, so flowhn.build_model can rebuild TinyLM from a checkpoint."""
    return TinyLM(cfg.model.vocab, cfg.model.dim)
