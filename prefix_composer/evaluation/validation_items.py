"""Per-item validation records: one item per validation sequence, at every evaluation of the eval split.

The callback ``validation_items`` (YAML ``callbacks: {validation_items: {}}``) writes, at every pass
of Composer's evaluator ``eval`` (llm-foundry's ``eval_loader`` at ``eval_interval``),
``<run folder>/validation/ba<batch>.jsonl.gz`` (``records.py``, task ``val``); ``scripts/eval_checkpoint.py
--val-data`` writes the same file for a checkpoint. For one sequence with the next-token labels
``y_t`` of its scored positions ``t`` (label not the ignore index, exactly the positions of the
``LanguageCrossEntropy`` metric) and the model's ``log p_t``::

    tokens = #t,  nll_sum = Σ_t -log p_t(y_t),  metrics.nll = nll_sum / tokens   (nats per token)

and the same sums over the positions whose gold token is in a class (``class_tokens``,
``class_nll_sum``, ``metrics.nll_<class>`` = their ratio, null where the sequence has no such token):
``prefixes_0 / 1 / 2 / 3+`` by the number of strict prefixes ``|P(y)|`` of the gold token
(``objectives.strict_prefix_ids``) and ``bytes_1 / 2-3 / 4-6 / 7+`` by its byte length. Special gold
ids (BOS, EOS) count in ``nll`` and in no class.

``doc_id`` is the sequence's MDS sample index in the split. The callback matches each evaluated
row to its indices by content (sha256 of its token ids; a table of the whole split built at fit
start); identical sequences get the same values. The evaluated set must be the whole split, the
same for every run, replica and world size: ``eval_loader.dataset.shuffle: false``,
``eval_loader.drop_last: false`` and ``eval_subset_num_batches`` -1 or at least the split's batches
per rank, checked at fit start (before batch 1).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import torch
from composer.core import Callback, Evaluator, Precision, State
from composer.loggers import Logger
from composer.utils import dist
from streaming import StreamingDataset
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedTokenizerBase

from prefix_composer.constants import IGNORE_INDEX
from prefix_composer.evaluation.callback import records_folder, state_run_identity, unwrap_hf_model
from prefix_composer.evaluation.eval_split import sample_tokens
from prefix_composer.evaluation.harness import AUTOCAST_DTYPES
from prefix_composer.evaluation.records import Records, measurement_records, records_path, remove_records_after, write_records
from prefix_composer.objectives import strict_prefix_ids, token_byte_strings
from prefix_composer.objectives.labels import next_token_labels
from prefix_composer.tokenizer import tokenizer_content_hash
from prefix_composer.training.metrics import log_partition, sparse_log_probs

log = logging.getLogger(__name__)

TASK = 'val'
PREFIX_CLASSES = ('prefixes_0', 'prefixes_1', 'prefixes_2', 'prefixes_3+')
BYTE_CLASSES = ('bytes_1', 'bytes_2-3', 'bytes_4-6', 'bytes_7+')
CLASSES = PREFIX_CLASSES + BYTE_CLASSES
METRICS = ('nll', *(f'nll_{c}' for c in CLASSES))
BYTE_CLASS_STARTS = (2, 4, 7)  # byte lengths where the next byte class starts


def class_membership(pieces: list[bytes], specials: set[int]) -> torch.Tensor:
    """[len(pieces), 8] float64: row ``y`` has a 1 in its ``PREFIX_CLASSES`` and its ``BYTE_CLASSES``
    column (special ids: no 1)."""
    counts = np.fromiter(map(len, strict_prefix_ids(pieces, specials)), dtype=np.int64, count=len(pieces))
    lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    member = np.zeros((len(pieces), len(CLASSES)))
    rows = np.arange(len(pieces))
    member[rows, np.minimum(counts, 3)] = 1.0
    member[rows, len(PREFIX_CLASSES) + np.searchsorted(BYTE_CLASS_STARTS, lengths, side='right')] = 1.0
    member[sorted(specials)] = 0.0
    return torch.from_numpy(member)


def sequence_sums(logits: torch.Tensor, labels: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """[B, 2 + 2·8] float64 per sequence of ``logits`` [B, L, V] / next-token ``labels`` [B, L]:
    ``tokens, nll_sum, class_tokens[8], class_nll_sum[8]`` (columns in ``CLASSES`` order)."""
    batch, length = labels.shape
    flat, gold = logits.reshape(batch * length, -1), labels.reshape(-1)
    valid = gold != IGNORE_INDEX
    safe = gold.masked_fill(~valid, 0)
    nll = -sparse_log_probs(flat, log_partition(flat), safe[:, None]).squeeze(1).to(torch.float64)
    nll = torch.where(valid, nll, 0.0).reshape(batch, length)
    classes = member.to(logits.device)[safe] * valid[:, None]  # [B·L, 8]
    classes = classes.reshape(batch, length, -1)
    return torch.cat([valid.reshape(batch, length).sum(1, keepdim=True).to(torch.float64), nll.sum(1, keepdim=True),
                      classes.sum(1), torch.einsum('blc,bl->bc', classes, nll)], dim=1).cpu()


def sequence_item(sample_id: int, sums: Iterable[float]) -> dict[str, Any]:
    """The record line of one sequence from its ``sequence_sums`` row."""
    sums = [float(x) for x in sums]
    tokens, nll_sum, class_tokens, class_nll = sums[0], sums[1], sums[2:2 + len(CLASSES)], sums[2 + len(CLASSES):]
    metrics = {'nll': nll_sum / tokens if tokens else None}
    metrics.update({f'nll_{c}': (s / n if n else None) for c, n, s in zip(CLASSES, class_tokens, class_nll)})
    return {'task': TASK, 'doc_id': int(sample_id), 'metrics': metrics, 'tokens': int(tokens), 'nll_sum': nll_sum,
            'class_tokens': {c: int(n) for c, n in zip(CLASSES, class_tokens)},
            'class_nll_sum': dict(zip(CLASSES, class_nll))}


def content_digest(tokens: Any) -> str:
    """sha256 of a sequence's token ids (as int64): the key that matches evaluated rows to samples."""
    return hashlib.sha256(torch.as_tensor(tokens, dtype=torch.int64).contiguous().numpy().tobytes()).hexdigest()


def split_digests(dataset: StreamingDataset) -> dict[int, str]:
    """``{sample index: content_digest}`` of every sample of the split."""
    return {i: content_digest(sample_tokens(dataset, i)) for i in range(dataset.num_samples)}


def validation_records(items: list[dict[str, Any]], digests: Mapping[int, str], run: Mapping[str, Any], batch: int,
                       tokens: int, tokenizer_hash: str, autocast: Optional[torch.dtype]) -> Records:
    """The records file of one evaluation; ``settings.items.val.hash`` covers every (id, content digest)."""
    digest = hashlib.sha256(''.join(f'{i} {digests[i]}\n' for i in sorted(digests)).encode()).hexdigest()
    settings = {'tasks': [TASK], 'items': {TASK: {'n': len(digests), 'hash': digest}},
                'tokenizer_hash': tokenizer_hash,
                'autocast': None if autocast is None else str(autocast).removeprefix('torch.'), 'classes': list(CLASSES)}
    return measurement_records('validation', run, batch, tokens, settings, {TASK: {m: False for m in METRICS}}, items,
                               info={})


def evaluate_split(model: torch.nn.Module, dataset: StreamingDataset, tokenizer: PreTrainedTokenizerBase,
                   batch_size: int, autocast: Optional[torch.dtype] = None) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """(items, digests) of every sample of ``dataset`` under the HF causal LM ``model`` (no Trainer:
    ``scripts/eval_checkpoint.py``); labels as llm-foundry's text collator makes them (pad ids ignored)."""
    member = class_membership(*token_byte_strings(tokenizer))
    device = next(model.parameters()).device
    items, digests = [], {}
    with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        for start in range(0, dataset.num_samples, batch_size):
            ids = range(start, min(start + batch_size, dataset.num_samples))
            rows = [sample_tokens(dataset, i) for i in ids]
            input_ids = torch.stack(rows).to(device)
            labels = input_ids.masked_fill(input_ids == tokenizer.pad_token_id, IGNORE_INDEX) \
                if tokenizer.pad_token_id is not None else input_ids
            sums = sequence_sums(model(input_ids=input_ids).logits, next_token_labels(labels), member)
            for i, row, values in zip(ids, rows, sums):
                items.append(sequence_item(i, values))
                digests[i] = content_digest(row)
    return items, digests


def check_evaluated_set(evaluator: Evaluator) -> StreamingDataset:
    """The evaluator's Streaming dataset, if every run evaluates all of it in a fixed order; else
    ``ValueError`` naming the YAML key."""
    dataloader = evaluator.dataloader.dataloader
    dataset = getattr(dataloader, 'dataset', None)
    if not isinstance(dataset, StreamingDataset):
        raise ValueError(f'callbacks.validation_items needs a Streaming eval_loader (name: text), got a '
                         f'{type(dataset).__name__} dataset: its items are MDS sample indices.')
    if dataset.shuffle:
        raise ValueError('eval_loader.dataset.shuffle is true: the validation sequences would be evaluated in a '
                         'seed-dependent order. Set eval_loader.dataset.shuffle: false (callbacks.validation_items).')
    if getattr(dataloader, 'drop_last', False):
        raise ValueError('eval_loader.drop_last is true: which sequences are dropped depends on the number of ranks. '
                         'Set eval_loader.drop_last: false (callbacks.validation_items).')
    subset, batches = evaluator.subset_num_batches, len(dataloader)
    if subset is not None and subset != -1 and subset < batches:
        raise ValueError(
            f'eval_subset_num_batches is {subset}, but the eval split holds {batches} batches per rank at world size '
            f'{dist.get_world_size()}: the evaluated validation sequences would depend on the number of ranks and '
            'differ between runs. Set eval_subset_num_batches: -1 (the whole split; callbacks.validation_items).',
        )
    return dataset


def composer_labels(state: State) -> torch.Tensor:
    """The next-token labels the model's ``eval_forward`` just stored (what the validation metrics score)."""
    model = state.model.module if isinstance(state.model, DistributedDataParallel) else state.model
    return model.labels


class ValidationItems(Callback):
    """Writes the per-item validation records at every pass of evaluator ``evaluator``; registered as
    ``validation_items``.

    Args:
        evaluator: label of the Composer evaluator to record (llm-foundry's ``eval_loader`` is ``eval``).
        records_dir: folder of the records files (``{run_name}`` formatted); default
            ``<parent of save_folder>/validation``.
    """

    def __init__(self, evaluator: str = 'eval', records_dir: Optional[str] = None):
        self.evaluator = evaluator
        self.records_dir = records_dir
        self.folder: Optional[str] = None
        self.dataset: Optional[StreamingDataset] = None
        self.member: Optional[torch.Tensor] = None
        self.run: Optional[dict[str, Any]] = None
        self.digests: Optional[dict[int, str]] = None  # sample index -> content digest (rank 0, built once)
        self.tokenizer_hash: Optional[str] = None  # rank 0, fit start
        self.rows: dict[str, torch.Tensor] = {}

    def fit_start(self, state: State, logger: Logger) -> None:
        """Before batch 1: the eval split is evaluated whole, the records folder is known, records past
        the resumed batch are deleted."""
        evaluators = {e.label: e for e in state.evaluators}
        if self.evaluator not in evaluators:
            raise ValueError(f'callbacks.validation_items.evaluator is {self.evaluator!r}, but the run has the evaluators '
                             f'{sorted(evaluators)}; set eval_loader (evaluator "eval") or name an existing one.')
        self.dataset = check_evaluated_set(evaluators[self.evaluator])
        self.run = state_run_identity(state)
        _, tokenizer = unwrap_hf_model(state)
        self.member = class_membership(*token_byte_strings(tokenizer))
        self.folder = records_folder(state, self.records_dir, callback='validation_items', kind='validation')
        if dist.get_global_rank() == 0:
            self.tokenizer_hash = tokenizer_content_hash(tokenizer)
            removed = remove_records_after(self.folder, int(state.timestamp.batch))
            if removed:
                log.info('validation_items: removed %d records files past the resumed batch %d.', len(removed),
                         int(state.timestamp.batch))

    def eval_start(self, state: State, logger: Logger) -> None:
        self.rows = {}

    def eval_after_forward(self, state: State, logger: Logger) -> None:
        if state.dataloader_label != self.evaluator:
            return
        sums = sequence_sums(state.outputs, composer_labels(state), self.member)
        for row, values in zip(state.batch['input_ids'], sums):
            self.rows.setdefault(content_digest(row.cpu()), values)

    def eval_end(self, state: State, logger: Logger) -> None:
        if state.dataloader_label != self.evaluator:
            return
        gathered = dist.all_gather_object({digest: values.tolist() for digest, values in self.rows.items()})
        self.rows = {}
        if dist.get_global_rank() != 0:
            return
        rows: dict[str, list[float]] = {}
        for part in gathered:
            for digest, values in part.items():
                rows.setdefault(digest, values)
        if self.digests is None:
            self.digests = split_digests(self.dataset)
        digests = self.digests
        missing = sorted(i for i, d in digests.items() if d not in rows)
        if missing:
            raise RuntimeError(f'validation_items: the evaluation scored no row for the samples {missing[:10]} of the '
                               f'{len(digests)} in the eval split; the evaluated set was not the whole split.')
        records = validation_records([sequence_item(i, rows[d]) for i, d in digests.items()], digests, self.run,
                                     int(state.timestamp.batch), int(state.timestamp.token), self.tokenizer_hash,
                                     AUTOCAST_DTYPES[Precision(state.precision)])
        path = records_path(self.folder, int(state.timestamp.batch))
        write_records(path, records)
        log.info('validation_items: %d sequences in %s.', len(records.items), path)
