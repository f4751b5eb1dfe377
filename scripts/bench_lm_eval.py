"""Wall time of one lm-eval evaluation (``evaluate_lm``, as the callback runs it) on 1 rank vs N gloo ranks.

    uv run python scripts/bench_lm_eval.py --ranks 2 --tasks charbench_single --limit 30

The same seeded tiny Llama (real Llama-3 tokenizer) scores the same items in 1 process, then in N
processes joined by a gloo process group (CPU; processes are forked from this one, so they start
without re-importing anything; ``--threads`` torch threads each). The metrics of the two runs
and every request's log-likelihood of the two runs
must be identical (the script exits 1 otherwise). It prints the forward calls per rank (equal on
all ranks, together ~ the single-rank count) and the wall-time ratio N-rank / 1-rank (slowest
rank), next to a baseline measured in the same invocation: a fixed amount of the evaluation's
dominant work (output layer + log-softmax over 128,256 ids) done by 1 process vs split over N. On an
idle machine with N free cores the baseline ratio is ~1/N; on a shared machine it shows how much
parallelism was available, and lm_eval ratio / baseline ratio ~ 1 means the sharding got all of it.
``--json PATH`` also writes the report.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from typing import Any, Callable

import torch
import torch.distributed
import torch.multiprocessing
from transformers import LlamaConfig, LlamaForCausalLM

from prefix_composer.evaluation.harness import evaluate_lm
from prefix_composer.evaluation.tasks import build_task_manager
from prefix_composer.tokenizer import PackagedLlama3Tokenizer


def tiny_llama(hidden_size: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128256, hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=2 * hidden_size, max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).train()


def timed_evaluations(args: argparse.Namespace) -> dict[str, Any]:
    """``args.repeats`` evaluations in this process; the fastest wall time, forward calls, metrics."""
    torch.set_num_threads(args.threads)
    model, tokenizer = tiny_llama(args.hidden_size, args.seed), PackagedLlama3Tokenizer()
    manager = build_task_manager(args.tasks, args.include_path)
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    times = []
    for _ in range(args.repeats):
        forwards.clear()
        start = time.perf_counter()
        result = evaluate_lm(model, tokenizer, args.tasks, manager, batch_size=args.batch_size, limit=args.limit)
        times.append(time.perf_counter() - start)
    loglikelihoods = None if result.items is None else {
        f"{item['task']}/{item['doc_id']}": item['loglikelihoods'] for item in result.items}
    return {'seconds': min(times), 'forward_calls': len(forwards), 'metrics': result.metrics,
            'loglikelihoods': loglikelihoods}


def eval_worker(rank: int, world_size: int, port: int, args: argparse.Namespace) -> dict[str, Any]:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.distributed.init_process_group('gloo', rank=rank, world_size=world_size)
    try:
        return timed_evaluations(args)
    finally:
        torch.distributed.destroy_process_group()


def calibration_worker(rank: int, world_size: int, port: int, args: argparse.Namespace) -> dict[str, Any]:
    """This process's 1/N share of a fixed amount of the evaluation's bulk work: the output layer,
    log-softmax and argmax over 128,256 ids for a batch of 40-token rows."""
    torch.set_num_threads(args.threads)
    hidden, output_layer = torch.randn(args.batch_size * 40, args.hidden_size), torch.randn(128256, args.hidden_size)
    start = time.perf_counter()
    for _ in range(args.calibration_steps // world_size):
        torch.log_softmax(hidden @ output_layer.T, dim=-1).argmax(dim=-1)
    return {'seconds': time.perf_counter() - start}


def write_result(rank: int, worker: Callable, world_size: int, port: int, args: argparse.Namespace, out_dir: str) -> None:
    result = worker(rank, world_size, port, args)
    with open(os.path.join(out_dir, f'rank{rank}.json'), 'w') as f:
        json.dump(result, f)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_processes(worker: Callable, world_size: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """``worker`` in ``world_size`` processes forked from this one; one result per rank."""
    out_dir = tempfile.mkdtemp(prefix='bench_lm_eval_')
    try:
        torch.multiprocessing.start_processes(
            write_result, args=(worker, world_size, free_port(), args, out_dir), nprocs=world_size,
            start_method='fork',
        )
        results = []
        for rank in range(world_size):
            with open(os.path.join(out_dir, f'rank{rank}.json')) as f:
                results.append(json.load(f))
        return results
    finally:
        shutil.rmtree(out_dir)


def wall_ratio(worker: Callable, args: argparse.Namespace) -> tuple[float, float, list[dict[str, Any]]]:
    """(1-process seconds, N-process seconds (slowest rank), N-process results): 1 process first."""
    (single,) = run_processes(worker, 1, args)
    ranks = run_processes(worker, args.ranks, args)
    return single['seconds'], max(r['seconds'] for r in ranks), [single, *ranks]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--ranks', type=int, default=2)
    parser.add_argument('--tasks', type=lambda s: s.split(','), default=['charbench_single'])
    parser.add_argument('--limit', type=int, default=40, help='documents per task')
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--hidden-size', type=int, default=64)
    parser.add_argument('--threads', type=int, default=1, help='torch threads per rank')
    parser.add_argument('--repeats', type=int, default=2, help='evaluations per run; the fastest is reported')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--calibration-steps', type=int, default=16, help='output-layer steps of the machine baseline')
    parser.add_argument('--include-path', action='append', default=[], help='extra task YAML folder')
    parser.add_argument('--json', help='write the report here too')
    args = parser.parse_args(argv)
    if args.ranks < 2:
        parser.error('--ranks must be at least 2')

    base_one, base_multi, _ = wall_ratio(calibration_worker, args)
    one, multi, (single, *ranks) = wall_ratio(eval_worker, args)
    identical = all(r['metrics'] == single['metrics'] for r in ranks)
    # every request's log-likelihood, gathered on rank 0, exactly as one rank computed it
    loglikelihoods_identical = ranks[0]['loglikelihoods'] == single['loglikelihoods']
    ratio, base_ratio = multi / one, base_multi / base_one
    report = {
        'tasks': args.tasks, 'limit': args.limit, 'batch_size': args.batch_size, 'threads_per_rank': args.threads,
        'ranks': args.ranks, 'one_rank_s': round(one, 3), 'n_ranks_s': round(multi, 3), 'ratio': round(ratio, 3),
        'one_rank_forward_calls': single['forward_calls'], 'n_ranks_forward_calls': [r['forward_calls'] for r in ranks],
        'baseline_one_s': round(base_one, 3), 'baseline_n_s': round(base_multi, 3), 'baseline_ratio': round(base_ratio, 3),
        'metrics_identical': identical, 'n_metrics': len(single['metrics']), 'metrics': single['metrics'],
        'loglikelihoods_identical': loglikelihoods_identical,
        'n_loglikelihoods': sum(len(v or ()) for v in single['loglikelihoods'].values()),
    }
    n = args.ranks
    print(f"tasks {','.join(args.tasks)}, limit {args.limit}, batch {args.batch_size}, {args.threads} thread(s)/rank")
    print(f"baseline (fixed output-layer work split over processes): 1 proc {base_one:7.2f} s, {n} procs "
          f"{base_multi:7.2f} s, ratio {base_ratio:.3f}")
    print(f"lm_eval: 1 rank {one:7.2f} s ({single['forward_calls']} forward calls), {n} ranks {multi:7.2f} s "
          f"({[r['forward_calls'] for r in ranks]} per rank), ratio {ratio:.3f}")
    print(f"ideal ratio {1 / n:.3f}; lm_eval ratio / baseline ratio = {ratio / base_ratio:.3f} (1.0: the sharding "
          f"scales as well as this machine allows)")
    print(f"metrics identical ({len(single['metrics'])} values): {identical}; every request's log-likelihood "
          f"identical ({report['n_loglikelihoods']} values): {loglikelihoods_identical}")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=1)
    return 0 if identical and loglikelihoods_identical else 1


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
