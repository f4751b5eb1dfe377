"""Benchmark the soft-target loss against ``F.cross_entropy`` and the fused head+loss against the
HF path (full logits, then the loss), printing ratios measured in this one invocation.

    uv run python scripts/bench_loss.py [--tokens 4096 8192] [--dtypes float32 bfloat16]
        [--objectives ...] [--fused-objectives ...] [--hidden 1536] [--repeats 3] [--device cpu]

Before timing, every path is checked numerically on a small slice (loss, NLL and gradients),
against a float64 dense reference. Time: fwd+bwd, median over ``--repeats`` rounds in one
process, the methods interleaved round by round so that load from other processes hits all of
them alike. Peak memory: a fresh subprocess per method and shape running one fwd+bwd; on CPU the
growth of ``ru_maxrss`` over the RSS after the inputs exist, on CUDA ``max_memory_allocated``
over the allocation after the inputs exist. Targets: the real Llama-3 vocabulary (128,256 ids)
and target tables, random gold ids.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from bench_common import (IGNORE, benchmark_spec, dense_reference, errors_against, input_stds, refill_inputs,
                          memory_now, run_path, sync)

from prefix_composer.losses.fused import fused_linear_soft_target_cross_entropy
from prefix_composer.losses.soft_target import soft_target_cross_entropy
from prefix_composer.objectives.targets import OBJECTIVES, SparseTargets, build_target_table
from prefix_composer.objectives.vocab import token_byte_strings
from prefix_composer.tokenizer import PackagedLlama3Tokenizer


def build_targets(objectives: list[str], tokens: list[int], folder: str) -> dict[str, str]:
    """Save labels + target rows for every (objective, N); returns {objective: path}."""
    pieces, specials = token_byte_strings(PackagedLlama3Tokenizer())
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, len(pieces), (max(tokens),), generator=gen)
    labels[::97] = IGNORE
    paths = {}
    for objective in objectives:
        table = build_target_table(pieces, specials, benchmark_spec(objective))
        rows = table.lookup(labels, IGNORE)
        paths[objective] = os.path.join(folder, f'{objective}.pt')
        torch.save({'labels': labels, 'ids': rows.ids, 'weights': rows.weights,
                    'uniform': (rows.uniform_mass, rows.uniform_count), 'vocab': len(pieces)}, paths[objective])
    return paths


def load_targets(path: str, n: int, device: str) -> tuple[torch.Tensor, SparseTargets, int]:
    saved = torch.load(path)
    targets = SparseTargets(saved['ids'][:n].to(device), saved['weights'][:n].to(device), *saved['uniform'])
    return saved['labels'][:n].to(device), targets, saved['vocab']


def loss_method(name: str, labels: torch.Tensor, targets: SparseTargets):
    """fwd+bwd on logits ``z``: ``F.cross_entropy`` (float32 math, as HF upcasts), else our loss."""
    if name == 'F.cross_entropy':
        return lambda z: F.cross_entropy(z.float(), labels, ignore_index=IGNORE).backward()
    return lambda z: soft_target_cross_entropy(z, labels, targets, IGNORE)[0].backward()


def head_method(name: str, labels: torch.Tensor, targets: SparseTargets):
    """fwd+bwd on (hidden, weight): ``hf`` (full logits, then the loss), ``fused`` (default chunk)
    or ``fused@C`` (chunks of C tokens)."""
    if name == 'hf':
        return lambda h, w: soft_target_cross_entropy(h @ w.t(), labels, targets, IGNORE)[0].backward()
    chunk = int(name.split('@')[1]) if '@' in name else None
    return lambda h, w: fused_linear_soft_target_cross_entropy(h, w, labels, targets, IGNORE, chunk)[0].backward()


def worker(job: dict) -> dict:
    """One measurement process: ``job['methods']`` is [[name, targets path], ...], run round-robin."""
    device, n, dtype = job['device'], job['n'], getattr(torch, job['dtype'])
    make = loss_method if job['kind'] == 'loss' else head_method
    runs = {}
    for name, path in job['methods']:
        labels, targets, vocab = load_targets(path, n, device)
        runs[name] = make(name, labels, targets)
    shapes = [(n, vocab)] if job['kind'] == 'loss' else [(n, job['hidden']), (vocab, job['hidden'])]
    inputs = [torch.empty(shape, dtype=dtype, device=device).requires_grad_() for shape in shapes]
    stds = input_stds(job['kind'], job.get('hidden', 0))

    refill_inputs(inputs, stds, device)
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    base = memory_now(device)
    times = {name: [] for name in runs}
    for _ in range(job['repeats']):
        for name, run in runs.items():
            refill_inputs(inputs, stds, device)
            start = time.perf_counter()
            run(*inputs)
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {'times': times, 'peak_bytes': memory_now(device) - base}


def run_worker(job: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, '--worker', json.dumps(job)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(job: dict, methods: list[list[str]], repeats: int) -> dict[str, tuple[float, float]]:
    """{method: (median seconds, peak bytes)}: interleaved timing in one process, memory one process each."""
    timed = run_worker({**job, 'methods': methods, 'repeats': repeats})['times']
    return {name: (statistics.median(timed[name]), run_worker({**job, 'methods': [[name, path]], 'repeats': 1})['peak_bytes'])
            for name, path in methods}


def check_numerics(paths: dict[str, str], device: str) -> None:
    """All paths agree with a float64 dense reference on 48 positions (loss and gradients w.r.t.
    logits, hidden states and weight); ``ce`` also with ``F.cross_entropy``. Exits if not."""
    for objective, path in paths.items():
        labels, targets, vocab = load_targets(path, 48, device)
        gen = torch.Generator(device=device).manual_seed(1)
        hidden = torch.randn(48, 64, generator=gen, device=device, dtype=torch.float64)
        weight = torch.randn(vocab, 64, generator=gen, device=device, dtype=torch.float64) / 4
        ref = dense_reference(hidden, weight, labels, targets)
        logits = errors_against(run_path('logits', hidden.float(), weight.float(), labels, targets), ref)
        fused = errors_against(run_path('fused', hidden.float(), weight.float(), labels, targets, chunk_tokens=7), ref)
        errors = {'loss': logits['loss'], 'fused_loss': fused['loss'], 'grad_logits': logits['grad_logits'],
                  'grad_hidden': fused['grad_hidden'], 'grad_weight': fused['grad_weight']}
        if objective == 'ce':
            z_ce = (hidden @ weight.t()).float().requires_grad_()
            F.cross_entropy(z_ce, labels, ignore_index=IGNORE).backward()
            errors['F.cross_entropy_grad'] = errors_against({'grad_logits': z_ce.grad}, ref)['grad_logits']
        print(f'numerics {objective:20s} ' + ' '.join(f'{k}={v:.1e}' for k, v in errors.items()), flush=True)
        if not all(v < 1e-4 for v in errors.values()):
            raise SystemExit(f'{objective}: a path disagrees with the float64 reference: {errors}')


def ratio_table(title: str, results: dict[str, tuple[float, float]], baseline: str) -> None:
    base_time, base_peak = results[baseline]
    print(f'\n{title}\n{"method":22s} {"time_s":>8s} {"peak_GB":>8s} {"time_ratio":>10s} {"peak_ratio":>10s}')
    for name, (seconds, peak) in results.items():
        print(f'{name:22s} {seconds:8.2f} {peak / 1e9:8.2f} {seconds / base_time:10.3f} {peak / max(base_peak, 1):10.3f}',
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--tokens', type=int, nargs='+', default=[4096, 8192])
    parser.add_argument('--dtypes', nargs='+', default=['float32', 'bfloat16'], choices=['float32', 'bfloat16'])
    parser.add_argument('--objectives', nargs='*', default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument('--fused-objectives', nargs='*', default=['prefix_softmax', 'label_smoothing'], choices=OBJECTIVES)
    parser.add_argument('--hidden', type=int, default=1536, help='d of the fused-vs-HF comparison')
    parser.add_argument('--fused-chunks', type=int, nargs='*', default=[],
                        help='also time the fused path at these tokens per chunk (default chunk: '
                             'fused_chunk_tokens(V))')
    parser.add_argument('--fused-dtype', default='float32', choices=['float32', 'bfloat16'])
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.repeats < 1 or min(args.tokens + args.fused_chunks + [args.hidden]) < 1:
        parser.error('--repeats, --tokens, --hidden and --fused-chunks must be positive')
    print(f'device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} '
          f'load_avg={os.getloadavg()[0]:.1f}', flush=True)
    with tempfile.TemporaryDirectory() as folder:
        paths = build_targets(sorted(set(args.objectives) | set(args.fused_objectives) | {'ce'}), args.tokens, folder)
        check_numerics(paths, args.device)
        for n in args.tokens:
            for dtype in args.dtypes if args.objectives else []:
                job = {'kind': 'loss', 'device': args.device, 'n': n, 'dtype': dtype}
                methods = [['F.cross_entropy', paths['ce']]] + [[o, paths[o]] for o in args.objectives]
                ratio_table(f'loss fwd+bwd, N={n}, V=128256, {dtype} logits (vs F.cross_entropy)',
                            measure(job, methods, args.repeats), 'F.cross_entropy')
            for objective in args.fused_objectives:
                job = {'kind': 'head', 'device': args.device, 'n': n, 'dtype': args.fused_dtype, 'hidden': args.hidden}
                fused = ['fused'] + [f'fused@{c}' for c in args.fused_chunks]
                results = measure(job, [[name, paths[objective]] for name in ['hf', *fused]], args.repeats)
                ratio_table(f'head+loss fwd+bwd, {objective}, N={n}, V=128256, d={args.hidden}, {args.fused_dtype} '
                            '(fused vs HF path: logits, then the loss)', results, 'hf')

if __name__ == '__main__':
    main()
