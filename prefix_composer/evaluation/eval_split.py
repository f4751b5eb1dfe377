"""The samples of the eval split as llm-foundry's text dataloader yields them, by MDS sample index."""

from __future__ import annotations

from typing import Mapping

import torch
from streaming import StreamingDataset


def sample_tokens(dataset: StreamingDataset, index: int) -> torch.Tensor:
    """The token ids llm-foundry's text dataset yields for sample ``index`` (pre-tokenized or text)."""
    sample = dataset[index]
    return torch.as_tensor(sample['input_ids'] if isinstance(sample, Mapping) else sample, dtype=torch.int64)
