"""Start-up cost of the shard-size check (``prefix_composer.data.shards``) on an MDS set of a run's size.

    uv run python scripts/bench_shard_check.py [--run-config yamls/base/brief001_100m.yaml] [--repeats 5]

Builds, in a temporary folder, the train and val splits that ``create_mds`` would write for the
run's ``variables.data.train_tokens``/``val_tokens`` at its ``max_seq_len``: as many shards as
``MDSWriter``'s default ``size_limit`` gives (its own sample encoding and per-shard/per-sample
bytes), each a sparse file of the exact size (``os.truncate``: no disk used), and an
``index.json`` with Streaming's shard entries. Times ``check_split_shards`` on both splits (the
first run and the best of ``--repeats``) against the 2 s budget, then checks that a shard cut by
one byte is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
from streaming import MDSWriter

from prefix_composer.data.manifest import COLUMNS
from prefix_composer.data.run_config import load_data_run_config
from prefix_composer.data.shards import INDEX_NAME, check_split_shards

BUDGET_S = 2.0


def write_sparse_split(folder: str, samples: int, seq_len: int) -> tuple[int, int]:
    """A split of ``samples`` sequences laid out as MDSWriter's default shards; returns the shard
    count and the samples per full shard."""
    writer = MDSWriter(out=folder, columns=COLUMNS)  # writes nothing until the first sample
    sample_bytes = len(writer.encode_sample({'tokens': np.zeros(seq_len, dtype=np.int32)})) + writer.extra_bytes_per_sample
    per_shard = (writer.size_limit - writer.extra_bytes_per_shard) // sample_bytes
    shards = []
    for i, start in enumerate(range(0, samples, per_shard)):
        n = min(per_shard, samples - start)
        basename = f'shard.{i:05}.mds'
        size = writer.extra_bytes_per_shard + n * sample_bytes
        with open(os.path.join(folder, basename), 'wb') as f:
            os.truncate(f.fileno(), size)
        shards.append({**writer.get_config(), 'samples': n, 'zip_data': None,
                       'raw_data': {'basename': basename, 'bytes': size, 'hashes': {}}})
    with open(os.path.join(folder, INDEX_NAME), 'w') as f:
        json.dump({'shards': shards, 'version': 2}, f)
    return len(shards), per_shard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--run-config', default='yamls/base/brief001_100m.yaml')
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()
    run = load_data_run_config(args.run_config, [])
    with tempfile.TemporaryDirectory() as root:
        splits = {run.train_split: run.train_tokens, run.val_split: run.val_tokens}
        for split, tokens in splits.items():
            os.makedirs(os.path.join(root, split))
            count, per_shard = write_sparse_split(os.path.join(root, split), tokens // run.max_seq_len, run.max_seq_len)
            print(f'{split}: {tokens:,} tokens = {tokens // run.max_seq_len:,} samples of {run.max_seq_len} int32 ids '
                  f'in {count} shards of up to {per_shard:,} samples (MDSWriter default size_limit)')
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for split in splits:
                check_split_shards(split, os.path.join(root, split))
            times.append(time.perf_counter() - start)
        print(f'check_split_shards, both splits: first {times[0] * 1e3:.1f} ms, best of {args.repeats} '
              f'{min(times) * 1e3:.1f} ms; first / {BUDGET_S:g} s budget = {times[0] / BUDGET_S:.4f}')
        shard = os.path.join(root, run.train_split, 'shard.00001.mds')
        os.truncate(shard, os.path.getsize(shard) - 1)
        try:
            check_split_shards(run.train_split, os.path.join(root, run.train_split))
        except ValueError as e:
            print(f'one byte cut off {os.path.basename(shard)}: refused ({str(e)[:60]}...)')
        else:
            raise SystemExit('a shard cut by one byte passed the check')


if __name__ == '__main__':
    main()
