"""Composer ``Algorithm`` StochasTok (Sims et al., arXiv 2506.01687): split tokens of the training
batch into two vocabulary tokens, on the fly; registered as ``stochastok``.

At ``INIT`` it builds the split table of the model's tokenizer once (``objectives/splits.py``:
every split of a non-special token into two non-special tokens whose bytes concatenate to it).
At ``AFTER_DATALOADER`` (training batches only: evaluation and lm-eval never see it) each sample
of the device batch gets ``floor(expand_prop * n)`` split attempts (``n``: its tokens with
attention mask 1), expanded as the reference ``StochastokProcessor.expand`` does, and is cut back to
its width (``max_seq_len``). ``labels`` follow the inputs (a split position's label becomes the
halves; an ignored label stays ignored on both halves; the model shifts them as always), and every
other per-position tensor of the batch (``attention_mask``, ``sequence_id`` ...) is carried to the
halves from the split token. Special tokens (BOS, EOS, padding) are never split.

Randomness: sample ``i`` of the device batch of global batch ``b`` is at position
``b * G + i * W + (local_rank * nodes + node_rank)`` of the data order (``G`` the global batch,
``W`` the world size), which is how Streaming deals a global batch out to the ranks (elastic
determinism: the same samples in the same order for any number of devices, with
``num_canonical_nodes`` fixed); its split draws are a hash of (``seed``, that position). So the
same sample is split the same way after a resume and on any number of devices, and a seed replica
(other ``seed``) splits differently.

Logged every batch, summed over ranks: ``stochastok/split_prop`` (splits made / tokens before
splitting), ``stochastok/tokens`` (tokens in the batch after the cut) and
``stochastok/dropped_tokens`` (tokens pushed past the cut). Algorithms run in reverse order on
``AFTER_`` events (Composer's FILO pass), so list ``stochastok`` after ``prefix_smoothing`` for the
latter's first-batch measurement to see the split batch; its targets (``BEFORE_LOSS``) always do.
"""

from __future__ import annotations

import logging
import time

import torch
from composer.core import Algorithm, Event, State
from composer.loggers import Logger
from composer.utils import dist

from prefix_composer.constants import is_number
from prefix_composer.objectives import token_byte_strings
from prefix_composer.objectives.splits import SplitTable, build_split_table, expand

log = logging.getLogger(__name__)


def sample_positions(batch_index: int, device_batch: int) -> torch.Tensor:
    """Positions in the data order of the samples of this rank's device batch of global batch ``batch_index``."""
    world = dist.get_world_size()
    local_world = dist.get_local_world_size()
    slot = dist.get_local_rank() * (world // local_world) + dist.get_node_rank()
    return batch_index * device_batch * world + torch.arange(device_batch, dtype=torch.int64) * world + slot


class StochasTok(Algorithm):
    """Split a proportion ``expand_prop`` (in [0, 1]; 0.1 in the paper) of each training sample's
    token positions into two vocabulary tokens (see the module docstring for exactly what it means)."""

    def __init__(self, expand_prop: float = 0.1):
        if not (is_number(expand_prop) and 0.0 <= expand_prop <= 1.0):
            raise ValueError(f'algorithms.stochastok.expand_prop must be a number in [0, 1] (the share of token positions '
                             f'drawn for splitting; 0.1 in the paper), got {expand_prop!r}.')
        self.expand_prop = float(expand_prop)
        self.table: SplitTable | None = None

    def match(self, event: Event, state: State) -> bool:
        return event in (Event.INIT, Event.AFTER_DATALOADER)

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        if event == Event.INIT:
            self.table = self._build(state)
            return
        batch = state.batch
        device = state.device.tensor_to_device(torch.zeros(0)).device
        input_ids = batch['input_ids'].to(device)
        width = input_ids.shape[1]
        mask = batch.get('attention_mask')
        valid = mask.to(device).bool() if mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        if self.table.offsets.device != device:
            self.table = self.table.to(device)
        positions = sample_positions(int(state.timestamp.batch), input_ids.shape[0])
        out = expand(input_ids, valid, self.table, self.expand_prop, state.rank_zero_seed, positions)
        for key, value in list(batch.items()):
            if key == 'input_ids':
                batch[key] = out.input_ids
            elif key == 'labels':
                labels, inputs = (x.to(device).gather(1, out.source) for x in (value, input_ids))
                batch[key] = torch.where(labels == inputs, out.input_ids, labels)  # IGNORE_INDEX stays ignored
            elif isinstance(value, torch.Tensor) and value.shape[:2] == (input_ids.shape[0], width):
                batch[key] = value.to(device).gather(1, out.source)
        kept = valid.gather(1, out.source)
        totals = torch.stack([out.splits.sum(), valid.sum(), kept.sum(), out.dropped.sum()]).to(torch.float64)
        dist.all_reduce(totals)
        splits, before, after, dropped = totals.tolist()
        logger.log_metrics({'stochastok/split_prop': splits / max(before, 1.0), 'stochastok/tokens': after,
                            'stochastok/dropped_tokens': dropped})

    def _build(self, state: State) -> SplitTable:
        tokenizer = getattr(state.model, 'tokenizer', None)
        if tokenizer is None:
            raise ValueError('StochasTok needs a model with a tokenizer (model: name: prefix_llama).')
        start = time.perf_counter()
        table = build_split_table(*token_byte_strings(tokenizer))
        log.info('StochasTok expand_prop=%g: split table of %d splits for %d of %d ids built in %.2fs.', self.expand_prop,
                 len(table.left), int((table.counts > 0).sum()), len(table.counts), time.perf_counter() - start)
        return table
