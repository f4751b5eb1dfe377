"""YAML entries that the training stack takes without checking, refused before anything is built.

* Unknown keys: in ``model.config`` (``LlamaConfig`` keeps any key, so ``hiden_size`` would leave
  HF's default 4096 in place) and in the ``dataset`` block of every ``text`` loader, with its
  ``streams`` (llm-foundry hands on only the keys its dataset classes take and drops the rest).
* Durations that cannot work: ``max_duration`` of 0 or less (Composer's error would advise
  ``Trainer.fit(reset_time=True)``) and a ``save_interval`` that never fires (Composer skips an
  interval of 0 or less at every batch, the last one too, so nothing is ever saved).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
from typing import Callable

from composer.core import Time, TimeUnit
from llmfoundry.data.text_data import StreamingTextDataset
from omegaconf import DictConfig
from omegaconf import OmegaConf as om
from streaming import Stream, StreamingDataset
from transformers import LlamaConfig

from prefix_composer.config import run_loaders

log = logging.getLogger(__name__)

# PretrainedConfig kwargs that it stores under another name (so not among LlamaConfig().to_dict()'s keys).
PRETRAINED_CONFIG_RENAMED = ('attn_implementation', 'name_or_path', 'num_labels')
# Dataset keys that llm-foundry's text loader reads itself (llmfoundry.data.utils: the replication
# validator and the text collator), besides the dataset classes' parameters.
TEXT_LOADER_DATASET_KEYS = ('eos_token_id', 'bos_token_id', 'override_eos_token_id_mismatch_error',
                            'override_bos_token_id_mismatch_error', 'seq_parallel_replication', 'mlm_probability')


def parameters(*callables: Callable) -> frozenset[str]:
    """The named parameters of ``callables`` (no ``self``, ``*args`` or ``**kwargs``)."""
    return frozenset(name for fn in callables for name, p in inspect.signature(fn).parameters.items()
                     if name != 'self' and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


@functools.cache
def llama_config_keys() -> frozenset[str]:
    """What ``LlamaConfig`` reads: its ``__init__`` parameters, the public attributes it stores
    (``to_dict``: PretrainedConfig's own kwargs included) and ``PRETRAINED_CONFIG_RENAMED``."""
    stored = (key for key in LlamaConfig().to_dict() if not key.startswith('_'))
    return parameters(LlamaConfig.__init__) | frozenset(stored) | frozenset(PRETRAINED_CONFIG_RENAMED)


@functools.cache
def text_dataset_keys() -> frozenset[str]:
    """What llm-foundry's ``text`` loader reads of ``dataset``: the parameters of ``StreamingTextDataset``
    and ``StreamingDataset`` (the keys it passes on) and ``TEXT_LOADER_DATASET_KEYS``."""
    return parameters(StreamingTextDataset.__init__, StreamingDataset.__init__) | frozenset(TEXT_LOADER_DATASET_KEYS)


def unknown_keys(block, known: frozenset[str], where: str, reader: str) -> list[str]:
    """One message per key of the mapping ``block`` (nothing else has keys) that ``reader`` does not
    read, with the closest known key."""
    messages = []
    for key in block.keys() if isinstance(block, DictConfig) else ():
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), sorted(known), n=1)
        hint = f'did you mean {close[0]}?' if close else f'it takes {", ".join(sorted(known))}'
        messages.append(f'{where}.{key} is not a key of {reader} ({hint}); it would be ignored. '
                        'Fix or remove it in the YAML or the override.')
    return messages


def check_config_keys(cfg: DictConfig) -> None:
    """Refuse a key that nothing reads: in ``model.config`` of a ``prefix_llama`` model (checked against
    ``llama_config_keys``) and in the ``dataset`` block of every ``text`` loader (``text_dataset_keys``;
    each of its ``streams`` against ``Stream``'s parameters). ``ValueError`` naming every such key."""
    messages: list[str] = []
    if om.select(cfg, 'model.name') == 'prefix_llama':
        messages += unknown_keys(om.select(cfg, 'model.config'), llama_config_keys(), 'model.config', 'transformers.LlamaConfig')
    for name, loader in run_loaders(cfg):
        if loader.get('name') != 'text':
            continue
        dataset = loader.get('dataset')
        messages += unknown_keys(dataset, text_dataset_keys(), f'{name}.dataset',
                                 "llm-foundry's text dataset (StreamingTextDataset, StreamingDataset)")
        streams = dataset.get('streams') if isinstance(dataset, DictConfig) else None
        for stream in streams.keys() if isinstance(streams, DictConfig) else ():
            messages += unknown_keys(streams[stream], parameters(Stream.__init__), f'{name}.dataset.streams.{stream}',
                                     'streaming.Stream')
    if messages:
        raise ValueError('\n'.join(messages))


def parsed_time(cfg: DictConfig, key: str, example: str) -> Time:
    """``cfg[key]`` as a Composer ``Time`` (an integer counts epochs, as in Composer); ``ValueError`` naming it otherwise."""
    value = cfg.get(key)
    try:
        return Time.from_input(value, TimeUnit.EPOCH)
    except (ValueError, TypeError) as e:
        raise ValueError(f'{key}={value!r} is not a Composer duration ({e}); write a number and a unit, '
                         f'e.g. {key}={example} (units: ba, ep, tok, sp, dur).') from None


def check_durations(cfg: DictConfig) -> None:
    """Refuse ``max_duration`` <= 0 and, when checkpoints are saved (``save_folder``), a ``save_interval``
    <= 0; warn when ``save_interval`` is longer than ``max_duration`` (one checkpoint, at the end)."""
    max_duration = parsed_time(cfg, 'max_duration', '1000ba')
    if max_duration.value <= 0:
        raise ValueError(f'max_duration={cfg.max_duration} trains nothing. Set max_duration to the length of the run, '
                         'e.g. max_duration=1000ba; to extend a resumed run, set it above the batches already trained '
                         '(the batch count continues from the checkpoint).')
    if not cfg.get('save_folder') or cfg.get('save_interval') is None:
        return
    interval = parsed_time(cfg, 'save_interval', '500ba')
    if interval.value <= 0:
        raise ValueError(f'save_interval={cfg.save_interval} never saves a checkpoint: Composer skips an interval of 0 '
                         'at every batch, the last one too, so every preemption or crash would restart the run from '
                         'batch 0. Set save_interval to a positive duration, e.g. save_interval=500ba.')
    if (interval.unit == TimeUnit.DURATION and interval.value > 1) or \
            (interval.unit == max_duration.unit and interval.value > max_duration.value):
        log.warning('save_interval=%s is longer than max_duration=%s: the only checkpoint is the one at the end, so a '
                    'crash restarts the run from batch 0. Set a shorter save_interval to be able to resume.',
                    cfg.save_interval, cfg.max_duration)
