"""The embedded default: compare ``ce`` with a prefix objective on seed replicas, offline, on CPU.

    uv run python scripts/demo.py [--variants ce prefix_unnorm_eps1] [--seeds 2] [--batches 30] [--limit 10]
                                  [--parallel 2] [--dry-run] [key=value ...]

1. Collects English text already on this machine (the METADATA/LICENSE files of the installed
   Python packages, in sorted order) into ``data/demo/source/docs.jsonl``, and runs the real data
   pipeline on it (``download_fineweb_edu`` with local files, then ``create_mds``) as configured by
   ``yamls/smoke_cpu.yaml``.
2. Trains the tiny model of ``yamls/smoke_cpu.yaml`` with the objective blocks of ``yamls/<variant>.yaml``
   for each of ``--variants`` (any variant of ``scripts/make_yamls.py``; default ``ce`` and
   ``prefix_unnorm_eps1``, ``VARIANTS``; the first is the comparison's baseline; a schedule in
   ``dur`` runs over the demo's ``--batches``), ``--seeds`` replicas each: replica k of
   every variant has ``seed`` = ``shuffle_seed`` = 17 + k (paired: same init and data order) and
   the run name ``<variant>`` (k = 0) or ``<variant>_seed<k>``, in ``runs/demo/``. Each run is
   ``composer train.py yamls/smoke_cpu.yaml`` with overrides, ``--batches`` batches, validation
   every 10 on the whole validation split with per-sequence records (``validation_items``), and the
   ``lm_eval`` callback on CharBench with ``--limit`` items per subtask at the middle and the end,
   with the spelling probes (``PROBES``, also at batch 0) and prefix-path recovery (``RECOVERY``). ``--parallel`` runs train at once, each with cpu_count/parallel torch threads;
   each run's output goes to ``runs/demo/<run>/demo.log``.
3. Writes the curves (``scripts/plot_metrics.py``) and the report (``scripts/compare_runs.py``:
   item-paired differences to the baseline with 95% CIs, adjusted p-values and minimum detectable
   effects, for every record kind the runs wrote: lm-eval, validation, probes, recovery), and ends
   by printing the report's tables and the paths of ``results.md``, the forest plot and the curves.

Rerunning reuses what is done: existing data, finished runs (checkpoint and records of the last
batch; a final checkpoint without its records is scored by ``scripts/eval_checkpoint.py``), and
unfinished runs autoresume. Delete ``runs/demo`` to start over. Extra ``key=value`` arguments go to
the data scripts and to every training run.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import shlex
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor

from omegaconf import OmegaConf

import compare_runs
import plot_metrics
from make_yamls import FAMILIES, flow_yaml
from prefix_composer.config import load_config, replica_run_name
from prefix_composer.data.build_mds import create_mds
from prefix_composer.data.download import describe_source, download
from prefix_composer.data.run_config import load_data_run_config
from prefix_composer.evaluation.records import RECORDS_SUBDIR, records_path
from prefix_composer.runtime.checkpoints import CHECKPOINT_PATTERN
from prefix_composer.training.eps_schedule import objective_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAML = 'yamls/smoke_cpu.yaml'
SOURCE = 'data/demo/source/docs.jsonl'
RUN_ROOT = 'runs/demo'
VARIANTS = ('ce', 'prefix_unnorm_eps1')  # objective blocks from yamls/<variant>.yaml; the first is the baseline
CHOICES = tuple(v.name for family in FAMILIES for v in family.variants)
TASKS = ('charbench',)
EVAL_EVERY = 10  # batches between validation evaluations
PROBES = {'max_tokens': 1000, 'folds': 3}  # callbacks.lm_eval.probes: small for 2 cores
RECOVERY = {'positions': 100, 'context': 64}  # callbacks.lm_eval.recovery


@dataclasses.dataclass(frozen=True)
class PlannedRun:
    """One training run of the demo: its name, seed replica and ``composer train.py`` overrides."""

    name: str
    variant: str
    replica: int
    seed: int
    overrides: tuple[str, ...]

    @property
    def folder(self) -> str:
        return os.path.join(RUN_ROOT, self.name)

    def command(self) -> list[str]:
        return [os.path.join(os.path.dirname(sys.executable), 'composer'), 'train.py', YAML, *self.overrides]


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


def objective_block(variant: str) -> dict:
    """``algorithms.prefix_smoothing`` of ``yamls/<variant>.yaml`` with every parameter (the unread ones at
    their neutral value), so that it replaces yamls/smoke_cpu.yaml's block key by key."""
    block = OmegaConf.load(os.path.join(REPO, 'yamls', f'{variant}.yaml')).algorithms.prefix_smoothing
    return objective_spec(**OmegaConf.to_container(block)).to_config(complete=True)


def augmentation_overrides(variant: str) -> list[str]:
    """Overrides for the other algorithm blocks of ``yamls/<variant>.yaml`` (``stochastok``: split inputs)."""
    blocks = OmegaConf.to_container(OmegaConf.load(os.path.join(REPO, 'yamls', f'{variant}.yaml')).algorithms)
    return [f'algorithms.{name}.{key}={value}' for name, block in blocks.items() if name != 'prefix_smoothing'
            for key, value in block.items()]


def plan_runs(seeds: int, batches: int, limit: int, extra: list[str], variants: tuple[str, ...] = VARIANTS) -> list[PlannedRun]:
    """Every (variant, replica) run; replica k of every variant shares seed and data order 17 + k."""
    if seeds < 1 or batches < 2 or limit < 1:
        raise ValueError(f'--seeds must be >= 1, --batches >= 2 and --limit >= 1; got {seeds}, {batches}, {limit}.')
    if len(set(variants)) < 2 or len(set(variants)) != len(variants):
        raise ValueError(f'--variants must name at least two distinct variants, got {list(variants)}.')
    base_seed = int(OmegaConf.load(os.path.join(REPO, YAML)).variables.global_seed)
    runs = []
    for variant in variants:
        block = objective_block(variant)
        for k in range(seeds):
            name, seed = replica_run_name(variant, k), base_seed + k
            overrides = (
                f'run_name={name}', f'variables.run_root={RUN_ROOT}',
                *(f'algorithms.prefix_smoothing.{key}={flow_yaml(value)}' for key, value in block.items()),
                *augmentation_overrides(variant),
                f'variables.global_seed={seed}',  # the YAML derives seed and shuffle_seed from it
                f'max_duration={batches}ba', f'eval_interval={min(EVAL_EVERY, batches)}ba',
                f'callbacks.lm_eval.tasks=[{",".join(TASKS)}]', f'callbacks.lm_eval.limit={limit}',
                f'callbacks.lm_eval.interval={batches // 2}ba', 'callbacks.lm_eval.batch_size=16',
                'eval_subset_num_batches=-1', 'callbacks.validation_items={}',
                *(f'callbacks.lm_eval.probes.{key}={value}' for key, value in PROBES.items()),
                *(f'callbacks.lm_eval.recovery.{key}={value}' for key, value in RECOVERY.items()),
                *extra,
            )
            runs.append(PlannedRun(name, variant, k, seed, overrides))
    return runs


def final_checkpoint(run: PlannedRun, batches: int) -> bool:
    """Whether the run's newest checkpoint is at its last batch (Composer refuses to resume it)."""
    folder = os.path.join(run.folder, 'checkpoints')
    if not os.path.isdir(folder):
        return False
    done = [int(m.group(2)) for name in os.listdir(folder) if (m := CHECKPOINT_PATTERN.match(name))]
    return max(done, default=0) >= batches


def train(run: PlannedRun, batches: int, limit: int, threads: int) -> str:
    """Train (or resume) ``run``; a run that is finished is reused. Returns what was done."""
    records = records_path(os.path.join(run.folder, RECORDS_SUBDIR), batches)
    if final_checkpoint(run, batches) and os.path.isfile(records):
        return 'finished before, reused'
    os.makedirs(run.folder, exist_ok=True)
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads)}
    if final_checkpoint(run, batches):  # trained, but the end-of-training evaluation was lost
        data = load_data_run_config(YAML, [])
        command = [sys.executable, 'scripts/eval_checkpoint.py', run.folder, '--tasks', ','.join(TASKS),
                   '--limit', str(limit), '--batch-size', '16', '--device', 'cpu', '--val-data',
                   os.path.join(data.mds_dir, data.val_split), '--probes', json.dumps(PROBES),
                   '--recovery', json.dumps(RECOVERY)]
        what = 'final checkpoint scored by scripts/eval_checkpoint.py'
    else:
        command, what = run.command(), 'trained'
    start = time.perf_counter()
    log_path = os.path.join(run.folder, 'demo.log')
    with open(log_path, 'a') as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f'{run.name}: `{" ".join(command)}` failed (exit {done.returncode}); see {log_path}.')
    return f'{what} in {time.perf_counter() - start:.0f} s'


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=CHOICES, metavar='VARIANT',
                        help=f'variants to train, the first the baseline of the comparison (default: {" ".join(VARIANTS)}); '
                             f'any of {", ".join(CHOICES)}')
    parser.add_argument('--seeds', type=int, default=2, help='seed replicas per variant (default 2)')
    parser.add_argument('--batches', type=int, default=30, help='training batches per run (default 30)')
    parser.add_argument('--limit', type=int, default=10, help='CharBench items per subtask (default 10, 20 subtasks)')
    parser.add_argument('--parallel', type=int, default=2, help='runs trained at once (default 2)')
    parser.add_argument('--dry-run', action='store_true', help='print the planned commands and exit')
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if '=' not in a or a.startswith('-')]
    if unknown:
        parser.error(f'unrecognized arguments {unknown}: options are listed by --help, overrides are key=value')
    os.chdir(REPO)
    runs = plan_runs(args.seeds, args.batches, args.limit, extra, tuple(args.variants))
    if args.dry_run:
        for run in runs:
            print(shlex.join(run.command()))
        return 0
    for run in runs:  # a bad override fails here, before any data or training
        load_config(YAML, run.overrides)

    start = time.perf_counter()
    data = load_data_run_config(YAML, extra)
    if not os.path.isdir(data.mds_dir):
        print(f'[demo] collecting {collect_local_text(SOURCE)} local documents into {SOURCE}', flush=True)
        download(data.raw_dir, describe_source(None, None, [SOURCE]), data.train_tokens, data.val_tokens)
        create_mds(data, workers=os.cpu_count() or 1)
    parallel = max(1, min(args.parallel, len(runs)))
    threads = max(1, (os.cpu_count() or 1) // parallel)
    print(f'[demo] {len(runs)} runs ({", ".join(args.variants)} x {args.seeds} seeds), {args.batches} batches each, '
          f'{parallel} at a time with {threads} torch thread(s); logs in {RUN_ROOT}/<run>/demo.log', flush=True)

    def one(run: PlannedRun) -> None:
        print(f'[demo] {run.name}: {train(run, args.batches, args.limit, threads)}', flush=True)

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, runs))

    curves = plot_metrics.write_plots(RUN_ROOT, os.path.join(RUN_ROOT, 'summary'))
    baseline = args.variants[0]
    print(f'\n[demo] compare_runs {RUN_ROOT} --baseline {baseline}', flush=True)
    compare_runs.main([RUN_ROOT, '--baseline', baseline, '--out-dir', os.path.join(RUN_ROOT, 'report')])
    for family, (_, _, paths) in curves.items():
        for path in paths:
            print(f'Wrote curves ({family}): {path}')
    print(f'[demo] done in {time.perf_counter() - start:.0f} s.')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
