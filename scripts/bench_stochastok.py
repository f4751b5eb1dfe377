"""Cost of StochasTok: training tokens/s of the smoke model with and without ``algorithms.stochastok``,
and the splitting alone on a device batch of the ~100M config, in one invocation.

    uv run python scripts/bench_stochastok.py [--rounds 2] [--batches 20] [--warmup 8] [--expand-prop 0.1]
        [--repeats 5] [--device cpu]

1. ``composer train.py yamls/smoke_cpu.yaml`` (objective ce) with and without the algorithm, runs
   interleaved round by round on the same random-id MDS data (``bench_train``); tokens/s is the
   median of Composer's ``throughput/tokens_per_sec`` past ``--warmup`` batches, median over rounds.
2. The split table's build time on the packaged Llama-3 vocabulary, and ``objectives.splits.expand``
   alone on one device batch of ``yamls/base/brief001_100m.yaml`` (global batch / 8 GPUs samples of
   ``max_seq_len`` Llama-3 ids of English text: the installed packages' LICENSE files), median of
   ``--repeats`` (what the algorithm adds to each optimizer step of every rank, before the model).
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

import torch
from omegaconf import OmegaConf as om

from bench_train import THROUGHPUT, tokens_per_second, write_random_mds
from make_yamls import REPO
from prefix_composer.objectives.splits import build_split_table, expand
from prefix_composer.objectives.vocab import token_byte_strings
from prefix_composer.tokenizer import PackagedLlama3Tokenizer

BASE_100M = os.path.join(REPO, 'yamls', 'base', 'brief001_100m.yaml')
GPUS = 8


def train(args, run_root: str, data: str, with_split: bool, round_index: int) -> float:
    run_name = f'{"stochastok" if with_split else "plain"}_r{round_index}'
    overrides = [f'run_name={run_name}', f'variables.run_root={run_root}', f'variables.data.mds_dir={data}',
                 'algorithms.prefix_smoothing.objective=ce', 'algorithms.prefix_smoothing.eps=0.0',
                 f'max_duration={args.batches}ba', 'eval_interval=100000ba', 'save_interval=100000ba',
                 'console_log_interval=1ba', 'autoresume=false',
                 *([f'algorithms.stochastok.expand_prop={args.expand_prop}'] if with_split else [])]
    composer = os.path.join(os.path.dirname(sys.executable), 'composer')
    result = subprocess.run([composer, 'train.py', 'yamls/smoke_cpu.yaml', *overrides], cwd=REPO, capture_output=True,
                            text=True)
    if result.returncode:
        raise SystemExit(f'{run_name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
    return tokens_per_second(os.path.join(run_root, run_name, 'metrics.csv'), args.warmup)


def english_ids(tokenizer, count: int) -> list[int]:
    files = sorted(glob.glob(os.path.join(sysconfig.get_paths()['purelib'], '*.dist-info', 'LICENSE*')))
    text = ''.join(open(f, encoding='ascii', errors='ignore').read() for f in files if os.path.isfile(f))
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return (ids * (count // len(ids) + 1))[:count]


def split_cost(args) -> None:
    cfg = om.to_container(om.load(BASE_100M), resolve=True)
    samples, width = cfg['global_train_batch_size'] // GPUS, cfg['max_seq_len']
    tokenizer = PackagedLlama3Tokenizer()
    start = time.perf_counter()
    table = build_split_table(*token_byte_strings(tokenizer))
    built = time.perf_counter() - start
    print(f'split table: {len(table.left):,} splits of {int((table.counts > 0).sum()):,} ids built in {built:.2f} s '
          f'(token_byte_strings included)')
    batch = torch.tensor(english_ids(tokenizer, samples * width)).reshape(samples, width).to(args.device)
    valid = torch.ones_like(batch, dtype=torch.bool)
    table = table.to(args.device)
    times = []
    for r in range(args.repeats + 1):  # the first one warms up
        start = time.perf_counter()
        out = expand(batch, valid, table, args.expand_prop, 17, torch.arange(samples) + r * samples)
        if args.device == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    ms = statistics.median(times[1:]) * 1e3
    print(f'expand on a 100M-config device batch ({samples} x {width} = {samples * width:,} tokens, expand_prop '
          f'{args.expand_prop:g}, {args.device}, {torch.get_num_threads()} threads): median {ms:.1f} ms of '
          f'{args.repeats} (min {min(times[1:]) * 1e3:.1f} ms), {samples * width / ms * 1e3:,.0f} tokens/s; '
          f'split proportion {float(out.splits.sum() / valid.sum()):.4f}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--batches', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=8)
    parser.add_argument('--expand-prop', type=float, default=0.1)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    args = parser.parse_args()
    if args.batches <= args.warmup + 1 or args.rounds < 1 or args.repeats < 1:
        parser.error('need --rounds >= 1, --repeats >= 1 and --batches > --warmup + 1')
    speeds: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, 'mds')
        write_random_mds(data, 128, {'train': 16 * args.batches, 'val': 16})
        for r in range(args.rounds):
            for with_split in ((False, True) if r % 2 == 0 else (True, False)):
                speeds[with_split].append(train(args, os.path.join(tmp, 'runs'), data, with_split, r))
                print(f'round {r} {"stochastok" if with_split else "plain":10s} {speeds[with_split][-1]:9.1f} tokens/s '
                      f'({THROUGHPUT})', flush=True)
    plain, split = statistics.median(speeds[False]), statistics.median(speeds[True])
    print(f'\nsmoke model, ce: {plain:.1f} tokens/s without, {split:.1f} with stochastok expand_prop '
          f'{args.expand_prop:g}: ratio {split / plain:.3f}')
    split_cost(args)


if __name__ == '__main__':
    main()
