"""The embedded default: prepare data and train a tiny model with a prefix objective, offline, on CPU.

    uv run python scripts/demo.py

1. Collects English text already on this machine (the METADATA/LICENSE files of the installed
   Python packages, in sorted order) into ``data/demo/source/docs.jsonl``.
2. Runs the real data pipeline on it (``download_fineweb_edu`` with local files, then
   ``create_mds``) as configured by ``yamls/smoke_cpu.yaml``.
3. Trains with ``composer train.py yamls/smoke_cpu.yaml`` (prefix_softmax, eps 1, tau 1; 30
   batches; checkpoints every 10; evaluation every 10) and prints where ``metrics.csv`` is.

Rerunning resumes: existing data is reused and training autoresumes (delete ``runs/smoke_cpu`` to
start over). Extra ``key=value`` arguments are passed to both the data scripts and training.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import sysconfig

from prefix_composer.data.build_mds import create_mds
from prefix_composer.data.download import describe_source, download
from prefix_composer.data.run_config import load_data_run_config
from prefix_composer.config import load_config

YAML = 'yamls/smoke_cpu.yaml'
SOURCE = 'data/demo/source/docs.jsonl'


def collect_local_text(path: str) -> int:
    """Write every package METADATA/LICENSE text in site-packages as one JSONL document each."""
    site = sysconfig.get_paths()['purelib']
    files = sorted(glob.glob(os.path.join(site, '*.dist-info', 'METADATA')) +
                   glob.glob(os.path.join(site, '*.dist-info', 'LICENSE*')))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as out:
        for name in files:
            with open(name, errors='replace') as f:
                out.write(json.dumps({'text': f.read()}) + '\n')
    return len(files)


def main(overrides: list[str]) -> None:
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = load_data_run_config(YAML, overrides)
    if not os.path.isdir(run.mds_dir):
        print(f'[demo] collecting {collect_local_text(SOURCE)} local documents into {SOURCE}', flush=True)
        download(run.raw_dir, describe_source(None, None, [SOURCE]), run.train_tokens, run.val_tokens)
        create_mds(run, workers=os.cpu_count() or 1)
    print(f'[demo] training: composer train.py {YAML} {" ".join(overrides)}', flush=True)
    subprocess.run(['composer', 'train.py', YAML, *overrides], check=True)
    cfg = load_config(YAML, overrides)
    print(f'[demo] done. Metrics: {cfg.loggers.csv.path}; checkpoints: {cfg.save_folder}', flush=True)


if __name__ == '__main__':
    main(sys.argv[1:])
