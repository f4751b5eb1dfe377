"""Finding and loading runs: a **run** is a folder with per-item lm-eval records
(``<run>/lm_eval/ba<batch>.jsonl.gz``) and usually a ``metrics.csv``. Its identity is the records
header's ``run`` block (all of its records must agree): name, seed, model config, objective. A
**variant** is a run name without its ``_seed<k>`` suffix."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional, Sequence

import pandas as pd

from prefix_composer.config import SEED_SUFFIX
from prefix_composer.evaluation.records import RECORDS_SUBDIR, read_header, records_by_batch

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
    records: dict[int, str]                # tokens -> records file
    validation: dict[int, dict[str, float]]  # tokens -> {metrics/eval/<Name>: value}


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


def read_validation(folder: str) -> dict[int, dict[str, float]]:
    """``{tokens: {metrics/eval/<Name>: value}}`` from the run's ``metrics.csv`` ``phase=eval`` rows."""
    path = os.path.join(folder, 'metrics.csv')
    if not os.path.isfile(path):
        return {}
    frame = pd.read_csv(path)
    columns = [c for c in frame.columns if c.startswith(VAL_PREFIX)]
    rows = frame[frame['phase'] == 'eval'] if 'phase' in frame.columns else frame.iloc[0:0]
    return {int(r['tokens']): {c: float(r[c]) for c in columns if pd.notna(r[c])} for _, r in rows.iterrows()}


def recorded_model(folder: str) -> Optional[dict[str, Any]]:
    """The model config in the run's newest lm-eval records header; None if it has no records."""
    files = records_by_batch(os.path.join(folder, RECORDS_SUBDIR))
    return read_header(list(files.values())[-1])['run']['model'] if files else None


def load_run(folder: str) -> Run:
    """The run in ``folder``; ``ValueError`` if it has no records or its records disagree about the run."""
    files = records_by_batch(os.path.join(folder, RECORDS_SUBDIR))
    if not files:
        raise ValueError(f'{folder} has no per-item lm-eval records ({RECORDS_SUBDIR}/ba<batch>.jsonl.gz): it was trained '
                         'without callbacks.lm_eval. Score its checkpoints with scripts/eval_checkpoint.py first.')
    headers = {path: read_header(path) for path in files.values()}
    first_path, first = next(iter(headers.items()))
    for path, header in headers.items():
        if header['run'] != first['run']:
            raise ValueError(f'The records of {folder} disagree about the run: {os.path.basename(first_path)} has '
                             f'{json.dumps(first["run"])}, {os.path.basename(path)} has {json.dumps(header["run"])}.')
    run = first['run']
    return Run(folder=folder, name=run['run_name'], variant=SEED_SUFFIX.sub('', run['run_name']), seed=run['seed'],
               objective=run['objective'], model=run['model'],
               records={h['tokens']: p for p, h in headers.items()}, validation=read_validation(folder))
