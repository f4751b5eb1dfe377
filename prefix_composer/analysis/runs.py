"""Finding and loading runs: a **run** is a folder with per-item lm-eval records
(``<run>/lm_eval/ba<batch>.jsonl.gz``), possibly other per-item measurements in folders beside them
(``records.RECORD_KINDS``: ``validation/``, ``probes/``, ``recovery/``) and usually a
``metrics.csv``. Its identity is the records headers' ``run`` block (all of its records must
agree): name, seed, model config, objective. A **variant** is a run name without its
``_seed<k>`` suffix."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Sequence

import pandas as pd

from prefix_composer.config import SEED_SUFFIX
from prefix_composer.evaluation.records import RECORD_KINDS, RECORDS_SUBDIR, read_header, records_by_batch

VAL_PREFIX = 'metrics/eval/'


@dataclasses.dataclass(frozen=True)
class Run:
    """One run folder: its identity (from its records) and its records and validation rows by tokens."""

    folder: str
    name: str
    variant: str
    seed: int
    objective: Optional[dict[str, Any]]
    model: dict[str, Any]
    records: dict[str, dict[int, str]]     # kind -> tokens -> records file (lm_eval always present)
    validation: dict[int, dict[str, float]]  # tokens -> {metrics/eval/<Name>: value}
    trained_tokens: int                    # the largest token count in metrics.csv (0 without one)
    augmentation: Optional[dict[str, Any]] = None  # run.augmentation: inputs split by StochasTok


def is_run_folder(path: str) -> bool:
    return os.path.isdir(os.path.join(path, RECORDS_SUBDIR)) or os.path.isfile(os.path.join(path, 'metrics.csv'))


def expand_run_folders(paths: Sequence[str]) -> list[str]:
    """Each path that is a run folder, or else the run folders directly inside it (a runs root)."""
    folders = []
    for path in paths:
        if not os.path.isdir(path):
            raise FileNotFoundError(f'No such folder: {path}')
        if is_run_folder(path):
            folders.append(os.path.abspath(path))
            continue
        inside = sorted(os.path.join(path, n) for n in os.listdir(path) if is_run_folder(os.path.join(path, n)))
        if not inside:
            raise FileNotFoundError(f'{path} is neither a run folder (with {RECORDS_SUBDIR}/ or metrics.csv) nor a folder of runs.')
        folders += [os.path.abspath(p) for p in inside]
    return list(dict.fromkeys(folders))


def read_metrics(folder: str) -> tuple[dict[int, dict[str, float]], int]:
    """``({tokens: {metrics/eval/<Name>: value}}, trained tokens)`` from the run's ``metrics.csv``:
    its ``phase=eval`` rows and its largest ``tokens`` (empty and 0 without the file)."""
    path = os.path.join(folder, 'metrics.csv')
    if not os.path.isfile(path):
        return {}, 0
    frame = pd.read_csv(path)
    columns = [c for c in frame.columns if c.startswith(VAL_PREFIX)]
    rows = frame[frame['phase'] == 'eval'] if 'phase' in frame.columns else frame.iloc[0:0]
    validation = {int(r['tokens']): {c: float(r[c]) for c in columns if pd.notna(r[c])} for _, r in rows.iterrows()}
    return validation, int(frame['tokens'].max()) if 'tokens' in frame.columns and len(frame) else 0


def recorded_model(folder: str) -> Optional[dict[str, Any]]:
    """The model config in the run's newest lm-eval records header; None if it has no records."""
    files = records_by_batch(os.path.join(folder, RECORDS_SUBDIR))
    return read_header(list(files.values())[-1])['run']['model'] if files else None


def load_run(folder: str) -> Run:
    """The run in ``folder`` with its records of every kind; ``ValueError`` if it has no lm-eval
    records or its records disagree about the run."""
    files = {kind: records_by_batch(os.path.join(folder, kind)) for kind in RECORD_KINDS}
    if not files[RECORDS_SUBDIR]:
        raise ValueError(f'{folder} has no per-item lm-eval records ({RECORDS_SUBDIR}/ba<batch>.jsonl.gz): it was trained '
                         'without callbacks.lm_eval. Score its checkpoints with scripts/eval_checkpoint.py first.')
    headers = {path: read_header(path) for by_batch in files.values() for path in by_batch.values()}
    first_path, first = next(iter(headers.items()))
    for path, header in headers.items():
        if header['run'] != first['run']:
            raise ValueError(f'The records of {folder} disagree about the run: {os.path.relpath(first_path, folder)} has '
                             f'{json.dumps(first["run"])}, {os.path.relpath(path, folder)} has {json.dumps(header["run"])}.')
    run = first['run']
    validation, trained_tokens = read_metrics(folder)
    return Run(folder=folder, name=run['run_name'], variant=SEED_SUFFIX.sub('', run['run_name']), seed=run['seed'],
               objective=run['objective'], model=run['model'],
               records={kind: {headers[p]['tokens']: p for p in by_batch.values()} for kind, by_batch in files.items() if by_batch},
               validation=validation, trained_tokens=trained_tokens, augmentation=run.get('augmentation'))
