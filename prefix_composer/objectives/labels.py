"""Next-token labels and the one-hot targets of plain cross-entropy, shared by the model, the algorithm and the GPU check."""

from __future__ import annotations

import torch

from prefix_composer.constants import IGNORE_INDEX
from prefix_composer.objectives.targets import SparseTargets


def next_token_labels(labels: torch.Tensor) -> torch.Tensor:
    """Labels aligned with the logits: position t is scored on token t+1; the last position is ignored."""
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], dim=1)


def one_hot_targets(labels: torch.Tensor) -> SparseTargets:
    """``q = one_hot(y)`` for every position (ignored positions point at id 0; they are masked out)."""
    safe = labels.masked_fill(labels == IGNORE_INDEX, 0)
    return SparseTargets(safe[:, None], torch.ones(safe.shape + (1,), device=labels.device))
