"""The run folder's experiment record: a resumed run must be the experiment that wrote the checkpoints.

``<save_folder>/experiment.json`` (rewritten atomically at every start, by global rank 0, before
the model is built)::

    format:     "prefix_composer.experiment/1"
    run_name, started (UTC, the first start)
    experiment: {dotted key: value} of the experiment-defining entries of the resolved config
                (``EXPERIMENT_KEYS``; ``scheduler.*`` as ``schedule.resolved_schedule``: every parameter,
                durations relative to max_duration resolved) plus the sha256 of each loader's data
                manifest/index (``data.*``)
    settings:   {dotted key: value} of every other entry, as at the last start
    changes:    [{at, allowed, experiment: {key: [recorded, now]}}] deliberate changes let through

A run that resumes a checkpoint with an experiment entry changed stops with an error naming each
key (recorded -> now); ``allow_experiment_change=[key, ...]`` (a key or a dotted prefix such as
``optimizer``) lets a deliberate change through and records it. Other settings (``max_duration``,
intervals, micro-batch size, callbacks, loggers, ...) may change and are logged; a ``max_duration``
change that moves a ``dur``-relative duration of the schedule (``t_max`` defaults to ``1dur``)
changes ``scheduler.*`` and is refused, with the recorded value to pin. A fresh start (no
checkpoint to resume) records its own experiment. A folder with checkpoints but no record (made
before this check) gets the current config recorded, with a warning: it cannot be compared.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Any, Mapping, Optional, Sequence

from omegaconf import DictConfig, ListConfig
from omegaconf import OmegaConf as om

from prefix_composer.config import run_loaders
from prefix_composer.data.manifest import mds_manifest_path
from prefix_composer.files import read_json, sha256_file, write_json_atomic
from prefix_composer.runtime.schedule import describe_schedule, parse_duration, resolved_schedule

log = logging.getLogger(__name__)

RECORD_NAME = 'experiment.json'
RECORD_FORMAT = 'prefix_composer.experiment/1'
ALLOW_KEY = 'allow_experiment_change'
# Entries (and everything below them) that define the experiment; all else may change on a resume.
EXPERIMENT_KEYS = (
    'seed', 'max_seq_len', 'global_train_batch_size', 'model.name', 'model.config', 'tokenizer', 'algorithms',
    'optimizer', 'scheduler', 'train_loader.name', 'train_loader.dataset.remote', 'train_loader.dataset.split',
    'train_loader.dataset.max_seq_len', 'train_loader.dataset.shuffle', 'train_loader.dataset.shuffle_seed',
    'train_loader.dataset.shuffle_algo', 'train_loader.dataset.shuffle_block_size',
    'train_loader.dataset.num_canonical_nodes', 'data', 'precision',
)
UNSET = '<unset>'


def under(key: str, prefix: str) -> bool:
    """``key`` is ``prefix`` or an entry below it (``optimizer.lr`` is under ``optimizer``)."""
    return key == prefix or key.startswith(prefix + '.')


def flatten(value: Any, prefix: str = '') -> dict[str, Any]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}``; lists are values."""
    if isinstance(value, Mapping) and value:
        return {k: v for name, item in value.items() for k, v in flatten(item, f'{prefix}{name}.').items()}
    return {prefix.rstrip('.'): value}


def take_allowed_changes(cfg: DictConfig) -> tuple[str, ...]:
    """Remove ``allow_experiment_change`` from ``cfg`` (llm-foundry refuses unknown top-level keys); its keys."""
    allowed = cfg.pop(ALLOW_KEY, None)
    if allowed is None:
        return ()
    return tuple(str(key) for key in (allowed if isinstance(allowed, ListConfig) else [allowed]))


def file_sha256(path: str) -> Optional[str]:
    return sha256_file(path) if os.path.isfile(path) else None


def data_identity(cfg: DictConfig) -> dict[str, Any]:
    """``data.<loader>.manifest_sha256`` (create_mds's manifest) and ``data.<loader>.index_sha256``
    (Streaming's index of the split) of every loader reading a local MDS folder."""
    out = {}
    for name, loader in run_loaders(cfg):
        dataset = loader.get('dataset') or {}
        local = dataset.get('local')
        if not local or dataset.get('remote'):  # a remote's local cache may not be filled yet
            continue
        split_dir = os.path.join(str(local), str(dataset.get('split') or ''))
        out[f'data.{name}.manifest_sha256'] = file_sha256(mds_manifest_path(str(local)))
        out[f'data.{name}.index_sha256'] = file_sha256(os.path.join(split_dir, 'index.json'))
    return out


def run_entries(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(experiment, settings): the resolved config as dotted keys, split by ``EXPERIMENT_KEYS``; the
    scheduler block as the schedule the Trainer will run (``resolved_schedule``)."""
    flat = flatten({k: v for k, v in om.to_container(cfg, resolve=True).items() if k not in ('variables', 'scheduler')})
    flat.update(flatten(resolved_schedule(cfg), 'scheduler.'))
    flat.update(data_identity(cfg))
    experiment = {k: v for k, v in flat.items() if any(under(k, p) for p in EXPERIMENT_KEYS)}
    return experiment, {k: v for k, v in flat.items() if k not in experiment}


def differences(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (recorded, now)}`` of the keys whose values differ (``UNSET`` where one side lacks it)."""
    return {k: (recorded.get(k, UNSET), now.get(k, UNSET)) for k in sorted(set(recorded) | set(now))
            if recorded.get(k, UNSET) != now.get(k, UNSET)}


def describe(changes: Mapping[str, tuple[Any, Any]]) -> str:
    return '; '.join(f'{k}: {json.dumps(old)} -> {json.dumps(new)}' for k, (old, new) in changes.items())


def unflatten_block(flat: Mapping[str, Any], block: str) -> dict[str, Any]:
    """``{'scheduler.t_max': v}`` -> ``{'t_max': v}`` for the entries under ``block``."""
    return {k[len(block) + 1:]: v for k, v in flat.items() if under(k, block) and k != block}


def schedule_advice(record: Mapping[str, Any], experiment: Mapping[str, Any], settings: Mapping[str, Any],
                    refused: Sequence[str]) -> str:
    """What a refused ``scheduler.*`` change does to the LR curve and the absolute values that keep it."""
    keys = [k for k in refused if under(k, 'scheduler')]
    if not keys:
        return ''
    new = unflatten_block(experiment, 'scheduler')
    recorded = unflatten_block(record['experiment'], 'scheduler')  # sorted by key in the file
    old = {**{k: recorded[k] for k in new if k in recorded}, **recorded}
    was = record['settings'].get('max_duration', UNSET)
    moved = (f' (durations relative to max_duration follow it: max_duration {was} -> {settings.get("max_duration")}; '
             f'scheduler.t_max defaults to 1dur)' if was != settings.get('max_duration') else '')
    pins = [f'{k}={record["experiment"][k]}' for k in keys
            if k in record['experiment'] and parse_duration(record['experiment'][k]) is not None]
    keep = (f' To keep the recorded curve, set {" ".join(pins)} in the YAML (absolute: max_duration may then change '
            f'up to scheduler.t_max).' if pins else '')
    return (f' The LR schedule would change at the batches already trained or still to come: '
            f'{describe_schedule(old)} -> {describe_schedule(new)}{moved}.{keep}')


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


RECORD_DAMAGED = ('it holds the experiment the checkpoints beside it were trained with. Restore it from a copy to keep '
                  'that check, or delete it to resume without it (this run\'s config is then recorded as the experiment).')
RECORD_MISSING = ('%s has checkpoints but no %s: the experiment record was deleted (or the checkpoints predate '
                  'experiment records), so nothing can tell whether this config (seed, objective, data, ...) is the one '
                  'they were trained with. Resuming, and recording this run\'s config as the experiment from now on; if '
                  'anything experiment-defining changed, stop and start a new run folder with run_name=<new name>.')


def check_experiment(cfg: DictConfig, folder: str, resuming: bool, allowed: Sequence[str] = ()) -> dict[str, Any]:
    """Compare this run's experiment with ``<folder>/experiment.json`` and rewrite the record; returns it.

    Resuming (a checkpoint will be loaded) with an experiment entry changed that no ``allowed`` key
    covers raises ``ValueError`` naming each key with both values and the two ways out.
    """
    path = os.path.join(folder, RECORD_NAME)
    experiment, settings = run_entries(cfg)
    record = read_json(path, 'experiment record', RECORD_DAMAGED) if resuming and os.path.isfile(path) else None
    if record is None:
        if resuming:
            log.warning(RECORD_MISSING, folder, RECORD_NAME)
        record = {'format': RECORD_FORMAT, 'run_name': str(cfg.run_name), 'started': utc_now(), 'changes': []}
    else:
        changed = differences(record['experiment'], experiment)
        refused = [k for k in changed if not any(under(k, a) for a in allowed)]
        if refused:
            raise ValueError(
                f'{folder} holds checkpoints of another experiment: resuming them with this config would mix two '
                f'experiments. Changed since {path}: {describe({k: changed[k] for k in refused})}.'
                f'{schedule_advice(record, experiment, settings, refused)} Start a new run '
                f'folder with run_name=<new name>, or, if the change is deliberate, add '
                f'{ALLOW_KEY}=[{",".join(refused)}] to resume with it (it is recorded).',
            )
        unused = [a for a in allowed if not any(under(k, a) for k in changed)]
        if unused:
            log.warning('%s=%s: nothing recorded under %s changed; ignored.', ALLOW_KEY, list(allowed), unused)
        if changed:
            log.warning('Resuming with a deliberate experiment change (%s): %s.', ALLOW_KEY, describe(changed))
            record['changes'].append({'at': utc_now(), 'allowed': list(allowed),
                                      'experiment': {k: list(v) for k, v in changed.items()}})
        moved = differences(record['settings'], settings)
        if moved:
            log.info('Resuming with changed settings (not part of the experiment): %s.', describe(moved))
    record.update(experiment=experiment, settings=settings)
    write_json_atomic(path, record)
    return record
