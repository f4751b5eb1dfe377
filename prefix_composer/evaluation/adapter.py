"""lm-eval ``LM`` over a live Hugging Face causal LM, with log-likelihood requests sharded over ranks.

``ShardedHFLM`` subclasses lm-eval's ``HFLM`` (tokenisation, truncation, right padding, one forward
per shared context, greedy check: exactly what ``lm_eval --model hf`` computes) and changes only
how the log-likelihood requests are split into forward batches and spread over ranks:

1. Requests that share ``context + continuation[:-1]`` form one group (``HFLM`` scores such a
   group with a single forward row). Groups are sorted longest first, as ``HFLM`` sorts them.
2. Consecutive groups are cut into chunks of ``batch_size`` groups: one chunk is one forward
   batch. The chunks depend only on the requests and ``batch_size``, never on the world size.
3. Rank ``r`` of ``N`` scores chunks ``r, r+N, r+2N, ...`` (longest-first order spreads the cost
   evenly); one ``all_gather_object`` at the end gives every rank every score.

So N ranks compute bit-for-bit the forward batches that one rank computes, each does about 1/N of
them, and the only collective waits at most one chunk for the slowest rank. Every rank runs the
same number of forward calls (a rank short of one re-runs its shortest chunk and drops the
result), so a model whose forward itself needs all ranks (FSDP) cannot hang.

lm-eval's evaluator sees ``rank 0 / world size 1`` on every rank (``HFLM``'s behaviour for a model
instance): every rank builds all requests, receives all scores, and computes the same metrics.

BOS, as in training (every packed document starts with ``<|begin_of_text|>``): the tokenizer never
adds special tokens itself (``add_bos_token=False``, so the hub Llama-3 tokenizer's post-processor
is off and the packaged one, which has none, behaves the same), and every scored context gets
exactly one ``bos_token_id`` in front: a (context, continuation) pair's context ids, the empty
context (``HFLM``'s ``prefix_token_id``), the first rolling window, and each generation prompt.

Stopping: with ``should_stop`` (a collective, e.g. "any rank got SIGTERM"), it is asked on every
rank after every ``STOP_CHECK_PAIRS`` tokenised requests and before every forward batch (every rank
tokenises all requests and makes the same number of forward calls, so the calls match); True
raises ``EvaluationInterrupted`` on all ranks at once.

Only ``loglikelihood`` (multiple-choice tasks: hellaswag, piqa, winogrande, arc, CharBench) is
sharded. ``loglikelihood_rolling`` and ``generate_until`` are ``HFLM``'s: correct on any number of
ranks, but their work is not divided (rolling windows run on rank 0 chunk by chunk).
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Optional

import torch
from composer.utils import dist
from lm_eval.models.huggingface import HFLM
from transformers import PreTrainedModel, PreTrainedTokenizerBase

Request = tuple[tuple[str, str], list[int], list[int]]
STOP_CHECK_PAIRS = 1024  # tokenised (context, continuation) pairs between two should_stop checks


def forward_chunks(requests: list[Request], batch_size: int) -> list[list[int]]:
    """Indices of ``requests`` cut into forward batches of ``batch_size`` context groups, longest first."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (_, context, continuation) in enumerate(requests):
        groups.setdefault(tuple(context + continuation[:-1]), []).append(index)

    def sort_key(members: list[int]) -> tuple[int, tuple[int, ...]]:
        tokens = max((requests[i][1] + requests[i][2] for i in members), key=len)
        return -len(tokens), tuple(tokens)

    ordered = sorted(groups.values(), key=sort_key)
    return [
        [index for members in ordered[start:start + batch_size] for index in members]
        for start in range(0, len(ordered), batch_size)
    ]


def check_batch_size(batch_size: int) -> int:
    """A positive int (automatic batch sizes would differ between ranks and break exact equality)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f'lm_eval batch_size must be a positive integer, got {batch_size!r}.')
    return batch_size


class EvaluationInterrupted(Exception):
    """``should_stop`` said stop; the message says where (tokenising, or before which forward batch)."""


class ShardedHFLM(HFLM):
    """``HFLM`` on an in-memory model whose log-likelihood batches are split over all ranks.

    Args:
        model: the live ``transformers`` causal LM (not moved, not cast; ``HFLM`` puts it in eval
            mode, the caller restores the mode).
        tokenizer: its tokenizer; copied, because ``HFLM`` sets a pad token on the one it gets.
        batch_size: context groups per forward batch (``check_batch_size``).
        mixed_precision_dtype: autocast dtype of the forward (``None``: the weights' dtype).
        should_stop: collective asked while tokenising and before every forward batch (``None``: never stop).

    The context window is ``HFLM``'s default: ``max_position_embeddings`` of the model config.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int,
        mixed_precision_dtype: Optional[torch.dtype] = None,
        should_stop: Optional[Callable[[], bool]] = None,
    ):
        if tokenizer.bos_token_id is None:
            raise ValueError(
                f'lm_eval: the tokenizer ({type(tokenizer).__name__}) has no bos_token, but every evaluation context '
                'starts with BOS as every training document does; set tokenizer.kwargs.bos_token.',
            )
        super().__init__(
            pretrained=model,
            tokenizer=copy.deepcopy(tokenizer),
            backend='causal',
            batch_size=check_batch_size(batch_size),
            mixed_precision_dtype=mixed_precision_dtype,
            add_bos_token=False,
            prefix_token_id=tokenizer.bos_token_id,
        )
        self.should_stop = should_stop
        self.encoded_pairs = 0

    def stop_if_asked(self, where: str) -> None:
        if self.should_stop is not None and self.should_stop():
            raise EvaluationInterrupted(f'stopped {where}')

    def with_bos(self, ids: list[int]) -> list[int]:
        """``ids`` with exactly one leading BOS (already there when the text itself starts with the BOS token)."""
        bos = self.tokenizer.bos_token_id
        return ids if ids[:1] == [bos] else [bos, *ids]

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """``HFLM``'s split of ``context + continuation`` into ids, BOS in front of the context."""
        self.encoded_pairs += 1
        if self.encoded_pairs % STOP_CHECK_PAIRS == 0:
            self.stop_if_asked(f'while tokenising, after {self.encoded_pairs} requests')
        context_ids, continuation_ids = super()._encode_pair(context, continuation)
        return self.with_bos(context_ids), continuation_ids

    def tok_batch_encode(self, strings: list[str], padding_side: str = 'left', left_truncate_len: Optional[int] = None,
                         truncation: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Generation prompts: ``HFLM``'s batch encoding of each string with the BOS text in front once."""
        bos = self.tokenizer.bos_token
        return super().tok_batch_encode([s if s.startswith(bos) else bos + s for s in strings], padding_side,
                                        left_truncate_len, truncation)

    def _loglikelihood_tokens(
        self,
        requests: list[Request],
        disable_tqdm: bool = False,
        override_bs: Optional[int] = None,
    ) -> list[tuple[float, bool]]:
        """(log-likelihood, is greedy) per request; ``override_bs`` (``HFLM``'s rolling windows) is unused."""
        chunks = forward_chunks(requests, self.batch_size)
        rank, world_size = dist.get_global_rank(), dist.get_world_size()
        mine = chunks[rank::world_size]
        calls = math.ceil(len(chunks) / world_size)
        scores: dict[int, tuple[float, bool]] = {}
        for call in range(calls):
            self.stop_if_asked(f'before forward batch {call + 1} of {calls}')
            chunk = mine[call] if call < len(mine) else chunks[-1]  # a rank one short re-runs the shortest
            results = super()._loglikelihood_tokens([requests[i] for i in chunk], disable_tqdm=True)
            if call < len(mine):
                scores.update(zip(chunk, results))
        if world_size > 1:
            for part in dist.all_gather_object(scores):
                scores.update(part)
        return [scores[i] for i in range(len(requests))]
