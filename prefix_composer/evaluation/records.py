"""Per-item lm-eval records: one file per evaluation, ``<run folder>/lm_eval/ba<batch>.jsonl.gz``.

A records file is gzip'd JSON lines. Line 1 is the header, every further line one scored document::

    {"format": "prefix_composer.lm_eval_records", "version": 1, "batch": 500, "tokens": 262144000,
     "run": {"run_name": "ce", "seed": 17, "objective": {"objective": "ce", "eps": 0.0, ...}, "model": {...}},
     "settings": {...}, "groups": {"charbench_single": ["charbench_count_single", ...]},
     "higher_is_better": {"hellaswag": {"acc": true, "acc_norm": true}}, "info": {...}}
    {"task": "hellaswag", "doc_id": 0, "gold": 2, "loglikelihoods": [-41.25, ...], "metrics": {"acc": 0.0, "acc_norm": 1.0}}

``settings`` is how the evaluation was run (``SETTINGS_KEYS``): records whose settings differ must
not be compared (``settings_differences`` names what differs). ``info`` holds what does not change
the scores' meaning (lm-eval version, forward batch size). ``run`` says whose model it was (the
report groups runs by ``run.model``, pairs seed replicas by ``run.seed`` and names variants by
``run.objective`` and, for a run trained on split inputs, ``run.augmentation``). Items are sorted by (task, doc_id); keys are sorted and the gzip header carries
no time or name, so equal content gives byte-identical files (1 rank and N ranks write the same).

The other measurement kinds (``RECORD_KINDS``: ``validation``, ``probes``, ``recovery``, one folder
each in the run folder, ``records_folder``) use the same format with ``settings.kind`` set
(``measurement_records``); docs/evaluation.md describes them.

This module needs only the standard library, so the analysis scripts read records without
importing lm-eval or torch.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import re
from typing import Any, Iterator, Mapping

from prefix_composer.files import write_bytes_atomic

RECORDS_FORMAT = 'prefix_composer.lm_eval_records'
RECORDS_VERSION = 1
RECORDS_SUBDIR = 'lm_eval'
# One folder per kind in the run folder; every kind but lm_eval says its kind in ``settings.kind``.
RECORD_KINDS = ('lm_eval', 'validation', 'probes', 'recovery')
SETTINGS_KEYS = ('tasks', 'limit', 'num_fewshot', 'fewshot_random_seed', 'autocast', 'tokenizer_hash',
                 'task_versions', 'n_shot', 'items')
KIND_SETTINGS_KEYS = ('kind', 'tasks', 'items', 'tokenizer_hash')  # the settings every other kind has
_NAME = re.compile(r'^ba(\d+)\.jsonl\.gz$')


@dataclasses.dataclass(frozen=True)
class Records:
    """One evaluation: its ``header`` (line 1) and one dict per document (``task``, ``doc_id``,
    ``gold``, ``loglikelihoods``, ``metrics``)."""

    header: dict[str, Any]
    items: list[dict[str, Any]]


def records_folder(run_folder: str, kind: str) -> str:
    """``<run folder>/<kind>``: where the records of ``kind`` (one of ``RECORD_KINDS``) go."""
    if kind not in RECORD_KINDS:
        raise ValueError(f'Unknown records kind {kind!r}; one of {RECORD_KINDS}.')
    return os.path.join(run_folder, kind)


def default_records_folder(save_folder: str, kind: str = RECORDS_SUBDIR) -> str:
    """Where records of ``kind`` go without ``records_dir``: beside the checkpoint folder ``save_folder``."""
    return records_folder(os.path.dirname(os.path.abspath(save_folder)), kind)


def records_path(folder: str, batch: int) -> str:
    """``<folder>/ba<batch>.jsonl.gz``."""
    return os.path.join(folder, f'ba{int(batch)}.jsonl.gz')


def records_by_batch(folder: str) -> dict[int, str]:
    """``{batch: path}`` of the records files in ``folder`` (none if it does not exist), by batch."""
    if not os.path.isdir(folder):
        return {}
    found = {int(m.group(1)): os.path.join(folder, name) for name in os.listdir(folder) if (m := _NAME.match(name))}
    return dict(sorted(found.items()))


def remove_records_after(folder: str, batch: int) -> list[str]:
    """Delete the records of evaluations past ``batch`` (written by a run that was then preempted
    before its next checkpoint); returns the removed paths."""
    doomed = [path for b, path in records_by_batch(folder).items() if b > batch]
    for path in doomed:
        os.remove(path)
    return doomed


def encode_records(records: Records) -> bytes:
    """The file's bytes: JSON lines (sorted keys, no spaces), gzip with mtime 0 and no file name."""
    lines = [records.header, *records.items]
    text = ''.join(json.dumps(line, sort_keys=True, separators=(',', ':'), allow_nan=False) + '\n' for line in lines)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename='', mode='wb', fileobj=buffer, mtime=0) as f:
        f.write(text.encode('utf-8'))
    return buffer.getvalue()


def write_records(path: str, records: Records) -> None:
    """Write ``records`` to ``path`` atomically (temp file, fsync, rename, fsync of the folder)."""
    check_header(records.header, path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_bytes_atomic(path, encode_records(records))


def _lines(path: str) -> Iterator[dict[str, Any]]:
    try:
        with gzip.open(path, 'rt', encoding='utf-8') as f:
            for line in f:
                yield json.loads(line)
    except (OSError, EOFError, json.JSONDecodeError) as error:
        raise ValueError(f'lm-eval records file {path} is damaged ({type(error).__name__}: {error}); '
                         'delete it and re-score that checkpoint with scripts/eval_checkpoint.py.') from None


def check_header(header: Mapping[str, Any], path: str) -> None:
    """``ValueError`` unless ``header`` is a records header of this format version with every key."""
    if header.get('format') != RECORDS_FORMAT or header.get('version') != RECORDS_VERSION:
        raise ValueError(f'{path} is not a {RECORDS_FORMAT} file of version {RECORDS_VERSION} '
                         f'(format {header.get("format")!r}, version {header.get("version")!r}).')
    missing = [key for key in ('batch', 'tokens', 'run', 'settings', 'groups', 'higher_is_better') if key not in header]
    settings = header.get('settings', {})
    required = SETTINGS_KEYS if settings.get('kind', 'lm_eval') == 'lm_eval' else KIND_SETTINGS_KEYS
    missing += [f'settings.{key}' for key in required if key not in settings]
    if missing:
        raise ValueError(f'{path}: the records header lacks {missing}.')


def read_header(path: str) -> dict[str, Any]:
    """Line 1 of the records file at ``path`` (checked), without reading the items."""
    header = next(_lines(path), None)
    if not isinstance(header, dict):
        raise ValueError(f'lm-eval records file {path} is empty.')
    check_header(header, path)
    return header


def read_records(path: str) -> Records:
    """The whole records file at ``path``; ``ValueError`` naming the file if it is damaged."""
    lines = _lines(path)
    header = next(lines, None)
    if not isinstance(header, dict):
        raise ValueError(f'lm-eval records file {path} is empty.')
    check_header(header, path)
    return Records(header=header, items=list(lines))


def measurement_records(kind: str, run: Mapping[str, Any], batch: int, tokens: int, settings: Mapping[str, Any],
                        higher_is_better: Mapping[str, Mapping[str, bool]], items: list[dict[str, Any]],
                        info: Mapping[str, Any], baselines: Mapping[str, Any] | None = None) -> Records:
    """The records of a measurement ``kind`` other than ``lm_eval`` (``settings`` without ``kind``,
    which is added; ``items`` sorted here by (task, doc_id); no groups)."""
    if kind not in RECORD_KINDS[1:]:
        raise ValueError(f'measurement_records writes one of {RECORD_KINDS[1:]}, not {kind!r}.')
    header = {'format': RECORDS_FORMAT, 'version': RECORDS_VERSION, 'batch': int(batch), 'tokens': int(tokens),
              'run': dict(run), 'settings': {'kind': kind, **settings}, 'groups': {},
              'higher_is_better': {task: dict(m) for task, m in higher_is_better.items()}, 'info': dict(info)}
    if baselines is not None:
        header['baselines'] = baselines
    return Records(header=header, items=sorted(items, key=lambda item: (item['task'], item['doc_id'])))


MODEL_KEYS = ('model_type', 'vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads',
              'num_key_value_heads', 'head_dim', 'max_position_embeddings', 'rope_theta', 'rope_scaling', 'rms_norm_eps',
              'tie_word_embeddings', 'hidden_act', 'attention_bias', 'mlp_bias')


def run_identity(run_name: str, seed: int, model_config: Mapping[str, Any],
                 objective: Mapping[str, Any] | None, augmentation: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The header's ``run``: name, seed, the architecture keys (``MODEL_KEYS``) of the model
    config, and the training objective block (``None``: trained without ``PrefixSmoothing``, plain CE);
    ``augmentation`` only for a run whose inputs were augmented (``{'stochastok': {'expand_prop': 0.1}}``)."""
    identity = {
        'run_name': run_name,
        'seed': int(seed),
        'model': {key: model_config[key] for key in MODEL_KEYS if key in model_config},
        'objective': dict(objective) if objective is not None else None,
    }
    if augmentation:
        identity['augmentation'] = {name: dict(block) for name, block in augmentation.items()}
    return identity


def settings_differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = 'settings') -> list[str]:
    """``['settings.limit: 20 vs null', ...]``: every leaf where ``a`` and ``b`` differ (JSON
    notation, strings over 16 characters cut), the top-level keys first, so a changed ``limit``
    comes before the per-task item counts and hashes it changed."""
    out = []
    for key in sorted(set(a) | set(b), key=lambda k: (isinstance(a.get(k), dict) or isinstance(b.get(k), dict), str(k))):
        name = f'{prefix}.{key}'
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            out += settings_differences(a[key], b[key], name)
        elif a.get(key, '<absent>') != b.get(key, '<absent>'):
            out.append(f'{name}: {_short(a.get(key, "<absent>"))} vs {_short(b.get(key, "<absent>"))}')
    return out


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 18 else text[:16] + '…'
