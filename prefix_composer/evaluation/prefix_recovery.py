"""Prefix-path recovery: is the probability a model puts on a strict prefix of the gold token recovered
by the continuation that completes it?

Positions: ``positions`` validation positions ``(sample, t)`` (``t >= 1``) whose gold token ``y`` has at
least one strict prefix, drawn with ``seed`` from every such position of the eval split (the same for
every run). Context: the ``context`` tokens before ``t`` (fewer at the start of a sequence), the same
window for every path. For each strict prefix ``p`` of ``y`` (``objectives.strict_prefix_ids``) with
``rest`` = the canonical tokenization of the remaining bytes (the tokenizer's BPE model on those
bytes, mapped through the byte-level alphabet, so no UTF-8 decoding), from batched forwards::

    logp_gold          = log P(y | ctx)
    logp_marginal      = log( P(y | ctx) + Σ_p P(p | ctx)·P(rest_p | ctx, p) )
    recovered_fraction = Σ_p P(p | ctx)·P(rest_p | ctx, p) / Σ_p P(p | ctx)

``P(rest | ctx, p)`` is the product of the next-token probabilities of the rest's tokens. Items:
task ``recovery``, ``doc_id`` = sample index · max_seq_len + t; extra fields ``gold``,
``prefixes`` ([prefix id, rest ids, log P(p), log P(rest | p)]). Only global rank 0 computes.

The positions and the prefix table depend on the split and the vocabulary only: ``recovery_plan``
derives them once, and every evaluation of a run scores the same plan (``recovery_records``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Mapping, Optional

import numpy as np
import torch
from streaming import StreamingDataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prefix_composer.evaluation.records import Records, measurement_records
from prefix_composer.evaluation.eval_split import sample_tokens
from prefix_composer.objectives import strict_prefix_ids
from prefix_composer.objectives.vocab import bytes_to_unicode

TASK = 'recovery'
METRICS = ('logp_gold', 'logp_marginal', 'recovered_fraction')
RECOVERY_DEFAULTS = {'positions': 2000, 'context': 256, 'seed': 0, 'batch_size': 32}


def recovery_settings(config: Mapping[str, Any], key: str = 'callbacks.lm_eval.recovery') -> dict[str, Any]:
    """``RECOVERY_DEFAULTS`` updated by ``config`` (YAML block ``key``); every value a positive int (seed >= 0)."""
    unknown = sorted(set(config) - set(RECOVERY_DEFAULTS))
    if unknown:
        raise ValueError(f'{key} has unknown keys {unknown}; the keys are {sorted(RECOVERY_DEFAULTS)}.')
    settings = {**RECOVERY_DEFAULTS, **config}
    for name, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == 'seed' else 1):
            raise ValueError(f'{key}.{name} = {value!r} is invalid: an int >= {0 if name == "seed" else 1} '
                             f'(defaults {RECOVERY_DEFAULTS}).')
    return settings


def canonical_ids(tokenizer: PreTrainedTokenizerBase, data: bytes) -> list[int]:
    """The tokenizer's BPE tokenization of the raw bytes ``data`` (byte-level alphabet, no pre-tokenizer)."""
    alphabet = bytes_to_unicode()
    return [t.id for t in tokenizer.backend_tokenizer.model.tokenize(''.join(alphabet[b] for b in data))]


def draw_positions(dataset: StreamingDataset, prefixes: list[list[int]], count: int, seed: int) -> list[tuple[int, int]]:
    """``count`` (sample, t) drawn with ``seed`` among the positions t >= 1 whose gold has a strict prefix, sorted."""
    has_prefix = np.fromiter((bool(p) for p in prefixes), dtype=bool, count=len(prefixes))
    candidates = []
    for sample in range(dataset.num_samples):
        tokens = sample_tokens(dataset, sample).numpy()
        t = 1 + np.flatnonzero(has_prefix[tokens[1:]])
        candidates.append(np.stack([np.full_like(t, sample), t], axis=1))
    every = np.concatenate(candidates)
    if count < len(every):
        every = every[np.sort(np.random.default_rng(seed).choice(len(every), size=count, replace=False))]
    return [(int(s), int(t)) for s, t in every]


def path_log_probs(model: PreTrainedModel, paths: list[tuple[list[int], list[int]]], batch_size: int,
                   autocast: Optional[torch.dtype]) -> list[float]:
    """``Σ log P(continuation | context)`` of every (context ids, continuation ids), right-padded batches."""
    device = next(model.parameters()).device
    out: list[float] = []
    with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            width = max(len(c) + len(x) for c, x in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.int64)
            mask = torch.zeros(len(chunk), width, dtype=torch.int64)
            for row, (context, continuation) in enumerate(chunk):
                seq = context + continuation
                ids[row, :len(seq)] = torch.tensor(seq)
                mask[row, :len(seq)] = 1
            hidden = model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            rows, steps, targets = [], [], []  # only the scored positions go through the LM head
            for row, (context, continuation) in enumerate(chunk):
                rows += [row] * len(continuation)
                steps += range(len(context) - 1, len(context) + len(continuation) - 1)
                targets += continuation
            logits = model.get_output_embeddings()(hidden[rows, steps]).float()
            scored = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(targets, device=device)[:, None])
            scored = scored.squeeze(1).double().cpu()
            ends = np.cumsum([len(continuation) for _, continuation in chunk])
            out += [float(x.sum()) for x in torch.tensor_split(scored, ends[:-1].tolist())]
    return out


@dataclasses.dataclass(frozen=True)
class RecoveryPlan:
    """What every evaluation of a run scores: the vocabulary's bytes, each id's strict prefixes and the
    drawn (sample, t) positions of the eval split."""

    pieces: list[bytes]
    prefixes: list[list[int]]
    positions: list[tuple[int, int]]


def recovery_plan(dataset: StreamingDataset, pieces: list[bytes], specials: set[int],
                  settings: Mapping[str, Any]) -> RecoveryPlan:
    """The prefix table of the vocabulary and the positions drawn from the eval split ``dataset``."""
    prefixes = strict_prefix_ids(pieces, specials)
    return RecoveryPlan(pieces, prefixes, draw_positions(dataset, prefixes, settings['positions'], settings['seed']))


def recovery_items(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset: StreamingDataset,
                   plan: RecoveryPlan, settings: Mapping[str, Any],
                   autocast: Optional[torch.dtype] = None) -> list[dict[str, Any]]:
    """One item per position of ``plan`` (module docstring)."""
    pieces, prefixes = plan.pieces, plan.prefixes
    seq_len = len(sample_tokens(dataset, 0))
    paths, layout = [], []
    for sample, t in plan.positions:
        tokens = sample_tokens(dataset, sample).tolist()
        context, gold = tokens[max(0, t - settings['context']):t], tokens[t]
        splits = [(p, canonical_ids(tokenizer, pieces[gold][len(pieces[p]):])) for p in prefixes[gold]]
        layout.append((sample * seq_len + t, gold, splits, len(paths)))
        paths.append((context, [gold]))
        for p, rest in splits:
            paths.extend([(context, [p]), (context + [p], rest)])
    scores = path_log_probs(model, paths, settings['batch_size'], autocast)
    items = []
    for doc_id, gold, splits, at in layout:
        logp_gold = scores[at]
        pairs = [(scores[at + 1 + 2 * k], scores[at + 2 + 2 * k]) for k in range(len(splits))]
        logp_marginal = float(np.logaddexp.reduce([logp_gold] + [lp + lr for lp, lr in pairs]))
        prefix_mass = sum(math.exp(lp) for lp, _ in pairs)
        recovered = sum(math.exp(lp + lr) for lp, lr in pairs)
        items.append({'task': TASK, 'doc_id': doc_id, 'gold': gold,
                      'metrics': {'logp_gold': logp_gold, 'logp_marginal': logp_marginal,
                                  'recovered_fraction': recovered / prefix_mass if prefix_mass > 0 else None},
                      'prefixes': [[p, rest, lp, lr] for (p, rest), (lp, lr) in zip(splits, pairs)]})
    return items


def recovery_records(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset: StreamingDataset,
                     plan: RecoveryPlan, settings: Mapping[str, Any], run: Mapping[str, Any], batch: int, tokens: int,
                     tokenizer_hash: str, autocast: Optional[torch.dtype] = None) -> Records:
    """The recovery records of ``model`` at the positions of ``plan`` (``recovery_plan`` of the eval split ``dataset``)."""
    items = recovery_items(model, tokenizer, dataset, plan, settings, autocast)
    digest = hashlib.sha256(''.join(f'{i["doc_id"]} {i["gold"]}\n' for i in items).encode()).hexdigest()
    header_settings = {'tasks': [TASK], 'items': {TASK: {'n': len(items), 'hash': digest}},
                       'tokenizer_hash': tokenizer_hash, **settings}
    return measurement_records('recovery', run, batch, tokens, header_settings, {TASK: dict.fromkeys(METRICS, True)},
                               items, info={})
