"""Training throughput of each objective vs ``ce``: short ``composer train.py`` runs of the smoke
model, same data, same machine, one invocation; prints tokens/s and the ratio to ``ce``.

    uv run python scripts/bench_train.py [--objectives ...] [--loss-impls fused logits]
        [--rounds 2] [--batches 20] [--warmup 8] [--yaml yamls/smoke_cpu.yaml]

The runs go sequentially, interleaved round by round (objective order rotated each round) so
that load from other processes hits every objective alike. tokens/s is the median of the
``throughput/tokens_per_sec`` column over the train rows of the run's metrics.csv after
``--warmup`` batches (Composer's speed monitor averages over a 5-batch window); the reported
value is the median over rounds. Data: random Llama-3 ids in a temporary MDS set. Each objective
runs with ``bench_common.benchmark_spec`` (eps 0 for ce, 0.1 for label smoothing, 1.0 for the prefix ones).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np
from streaming import MDSWriter

from bench_common import benchmark_spec
from prefix_composer.objectives.targets import OBJECTIVES

THROUGHPUT = 'throughput/tokens_per_sec'


def write_random_mds(root: str, seq_len: int, samples: dict[str, int], vocab: int = 128000) -> None:
    """train/val splits of random token ids in llm-foundry's ``text`` layout."""
    rng = np.random.default_rng(0)
    for split, count in samples.items():
        with MDSWriter(out=os.path.join(root, split), columns={'tokens': 'ndarray:int32'}) as writer:
            for _ in range(count):
                writer.write({'tokens': rng.integers(0, vocab, seq_len, dtype=np.int32)})


def tokens_per_second(metrics_csv: str, warmup: int) -> float:
    with open(metrics_csv, newline='') as f:
        values = [float(row[THROUGHPUT]) for row in csv.DictReader(f)
                  if row['phase'] == 'train' and row.get(THROUGHPUT) and int(row['batch']) > warmup]
    if not values:
        raise SystemExit(f'No {THROUGHPUT} rows past batch {warmup} in {metrics_csv}: raise --batches.')
    return statistics.median(values)


def train(args, run_root: str, data: str, objective: str, loss_impl: str, round_index: int) -> float:
    run_name = f'{objective}_{loss_impl}_r{round_index}'
    composer = os.path.join(os.path.dirname(sys.executable), 'composer')
    overrides = [
        f'run_name={run_name}', f'variables.run_root={run_root}', f'variables.data.mds_dir={data}',
        *(f'algorithms.prefix_smoothing.{key}={value}' for key, value in vars(benchmark_spec(objective)).items()),
        f'model.loss_impl={loss_impl}',
        f'max_duration={args.batches}ba', 'eval_interval=100000ba', 'save_interval=100000ba',
        'console_log_interval=1ba', 'autoresume=false',
    ]
    result = subprocess.run([composer, 'train.py', args.yaml, *overrides], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f'{run_name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
    return tokens_per_second(os.path.join(run_root, run_name, 'metrics.csv'), args.warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--objectives', nargs='+', default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument('--loss-impls', nargs='+', default=['fused', 'logits'], choices=['fused', 'logits'])
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--batches', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=8)
    parser.add_argument('--seq-len', type=int, default=128)
    parser.add_argument('--yaml', default='yamls/smoke_cpu.yaml')
    args = parser.parse_args()
    if args.batches <= args.warmup + 1 or args.rounds < 1:
        parser.error('need --rounds >= 1 and --batches > --warmup + 1')
    configs = [(o, impl) for impl in args.loss_impls for o in dict.fromkeys(['ce', *args.objectives])]
    speeds: dict[tuple[str, str], list[float]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, 'mds')
        write_random_mds(data, args.seq_len, {'train': 16 * args.batches, 'val': 16})
        for r in range(args.rounds):
            for objective, impl in configs[r % len(configs):] + configs[: r % len(configs)]:
                speeds[(objective, impl)].append(train(args, os.path.join(tmp, 'runs'), data, objective, impl, r))
                print(f'round {r} {objective:20s} {impl:6s} {speeds[(objective, impl)][-1]:9.1f} tokens/s', flush=True)
    print(f'\n{"objective":20s} {"loss_impl":9s} {"tokens/s":>9s} {"vs ce":>7s} {"vs ce/logits":>12s}')
    median = {c: statistics.median(v) for c, v in speeds.items()}
    for objective, impl in configs:
        reference = median.get(('ce', 'logits'))
        print(f'{objective:20s} {impl:9s} {median[(objective, impl)]:9.1f} {median[(objective, impl)] / median[("ce", impl)]:7.3f} '
              f'{median[(objective, impl)] / reference if reference else float("nan"):12.3f}')


if __name__ == '__main__':
    main()
