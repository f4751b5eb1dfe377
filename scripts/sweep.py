"""A sweep as one thing: ``uv run python scripts/sweep.py {plan,submit,status,report} ...``.

    plan   FAMILY [key=value ...] [--seeds 0 1 2] [--variants ...] [--tokens-per-s-per-gpu R]
    submit FAMILY [key=value ...] [--seeds ...] [--variants ...] [--dry-run]
    status RUN_ROOT [FAMILY [key=value ...] --seeds ...: planned runs not started yet too] [--watch N] [--stall-after S]
    report RUN_ROOT [--at-tokens T] [compare_runs options ...]

FAMILY is a family of ``scripts/make_yamls.py`` (``brief001`` or ``brief000``, or its base file stem);
its runs are the committed YAMLs (replica 0: ``yamls/<variant>.yaml``, k >= 1:
``yamls/replicas/<variant>_seed<k>.yaml``), read with the ``key=value`` overrides as ``train.py``
reads them (the overrides go right after FAMILY, before the options). ``submit`` sends every run through ``runai/submit_train.sh`` except the finished,
live (run lock held) and diverged ones. ``status`` reads only the run folders
(``prefix_composer/runtime/sweep.py`` says how each state is decided) and exits 1 when a run is
failed, diverged or stalled. ``report`` runs ``scripts/compare_runs.py`` on the finished runs and
refuses while a run with evaluations is unfinished, unless ``--at-tokens`` picks an evaluation
every run has reached.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import compare_runs
import make_yamls

from prefix_composer.runtime.sweep import (
    gpu_hours,
    plan_run,
    run_folders,
    run_status,
    status_table,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBMIT = os.path.join(REPO, 'runai', 'submit_train.sh')
SKIPPED_STATES = ('finished', 'running', 'diverged')  # submit leaves these alone
DEFAULT_STALL_AFTER_S = 3600.0


def family_key(family: make_yamls.Family) -> str:
    return os.path.splitext(os.path.basename(family.base))[0]


def find_family(name: str) -> make_yamls.Family:
    for family in make_yamls.FAMILIES:
        key = family_key(family)
        if name in (key, key.split('_')[0]):
            return family
    names = ', '.join(f'{family_key(f).split("_")[0]} ({family_key(f)})' for f in make_yamls.FAMILIES)
    raise SystemExit(f'error: unknown family {name!r}; the families are {names}.')


def plan(args) -> list:
    family = find_family(args.family)
    names = [v.name for v in family.variants]
    unknown = sorted(set(args.variants or ()) - set(names))
    if unknown:
        raise SystemExit(f'error: --variants {unknown} are not variants of {family_key(family)}: {", ".join(names)}.')
    runs = []
    for variant in family.variants:
        if args.variants and variant.name not in args.variants:
            continue
        for k in args.seeds:
            yaml = os.path.join('yamls', make_yamls.replica_file(variant, k))
            if not os.path.isfile(os.path.join(REPO, yaml)):
                raise SystemExit(f'error: {yaml} does not exist; write the replicas with '
                                 f'`uv run python scripts/make_yamls.py --seeds {" ".join(map(str, args.seeds))}`.')
            runs.append(plan_run(variant.name, k, os.path.join(REPO, yaml), args.overrides))
    return runs


def cmd_plan(args) -> int:
    runs = plan(args)
    import pandas as pd  # noqa: PLC0415

    table = pd.DataFrame([{'variant': r.variant, 'replica': r.replica, 'yaml': os.path.relpath(r.yaml, REPO),
                           'run name': r.run_name, 'save folder': r.save_folder,
                           'tokens': '' if r.tokens is None else f'{r.tokens:,}'} for r in runs])
    print(table.to_string(index=False))
    total = sum(r.tokens or 0 for r in runs)
    print(f'\n{len(runs)} runs, {total:,} tokens in all.')
    if args.tokens_per_s_per_gpu:
        hours = gpu_hours(total, args.tokens_per_s_per_gpu)
        print(f'At {args.tokens_per_s_per_gpu:,.0f} tokens/s per GPU: {hours:,.0f} GPU-hours '
              f'({hours / args.gpus:,.1f} h of {args.gpus} GPUs; {hours / len(runs) / args.gpus:,.1f} h per run).')
    else:
        print('Pass --tokens-per-s-per-gpu (measured: docs/performance.md) for the GPU-hours.')
    return 0


def cmd_submit(args) -> int:
    failed = 0
    for run in plan(args):
        status = run_status(run.run_folder, args.stall_after)
        if status.state in SKIPPED_STATES:
            print(f'skip   {run.run_name}: {status.state}' + (f' ({status.note})' if status.note else ''), flush=True)
            continue
        print(f'submit {run.run_name} ({status.state}): {os.path.relpath(run.yaml, REPO)}', flush=True)
        command = ['bash', SUBMIT, *(['--dry-run'] if args.dry_run else []), os.path.relpath(run.yaml, REPO), *args.overrides]
        done = subprocess.run(command, cwd=REPO)
        if done.returncode != 0:
            print(f'error: submitting {run.run_name} failed (exit {done.returncode})', file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def statuses(args) -> list:
    found = run_folders(args.run_root)
    result = [run_status(folder, args.stall_after) for folder in found]
    if args.family:
        known = {os.path.basename(f) for f in found}
        missing = [r.run_name for r in plan(args) if r.run_name not in known]
        result += [run_status(os.path.join(args.run_root, name), args.stall_after) for name in missing]
    return result


def cmd_status(args) -> int:
    while True:
        result = statuses(args)
        if args.watch:
            print('\033[2J\033[H', end='')
        print(f'{args.run_root}: {len(result)} runs ({time.strftime("%Y-%m-%d %H:%M:%S %Z")})')
        print(status_table(result))
        attention = [s.run for s in result if s.needs_attention]
        if attention:
            print(f'\nneeds attention: {", ".join(attention)}')
        if not args.watch:
            return 1 if attention else 0
        time.sleep(args.watch)


def cmd_report(args) -> int:
    result = [s for s in (run_status(f, args.stall_after) for f in run_folders(args.run_root)) if s.lm_evals]
    unfinished = [f'{s.run} ({s.state})' for s in result if s.state != 'finished']
    if unfinished and args.at_tokens is None:
        print(f'error: {len(unfinished)} compared runs are not finished: {", ".join(unfinished)}. Wait for them, '
              f'or compare at an evaluation every run has reached with --at-tokens T.', file=sys.stderr)
        return 2
    folders = [os.path.join(args.run_root, s.run) for s in result if args.at_tokens is not None or s.state == 'finished']
    if not folders:
        print(f'error: no run under {args.run_root} has lm-eval records yet.', file=sys.stderr)
        return 2
    extra = ['--at-tokens', str(args.at_tokens)] if args.at_tokens is not None else []
    return compare_runs.main([*folders, *extra, *args.compare_args])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)

    def planned(sub, family_required=True):
        sub.add_argument('family', nargs=None if family_required else '?', help='brief001 or brief000')
        sub.add_argument('--seeds', type=int, nargs='+', default=list(make_yamls.DEFAULT_SEEDS), metavar='K',
                         help='seed replicas (default 0 1 2)')
        sub.add_argument('--variants', nargs='+', metavar='NAME', help='only these variants (default: all)')
        sub.add_argument('overrides', nargs='*', metavar='key=value', help='YAML overrides, as for train.py')

    def stall(sub):
        sub.add_argument('--stall-after', type=float, default=DEFAULT_STALL_AFTER_S, metavar='S',
                         help='a run not live with no write for S seconds is stalled (default 3600)')

    sub = commands.add_parser('plan', help='the runs of a family, tokens and GPU-hours')
    planned(sub)
    sub.add_argument('--tokens-per-s-per-gpu', type=float, metavar='R', help='training speed for the GPU-hours')
    sub.add_argument('--gpus', type=int, default=8, help='GPUs per run (default 8)')
    sub = commands.add_parser('submit', help='submit the runs of a family to Run:ai (runai/submit_train.sh)')
    planned(sub)
    sub.add_argument('--dry-run', action='store_true', help='print the runai commands, submit nothing')
    stall(sub)
    sub = commands.add_parser('status', help='one row per run, from the run folders')
    sub.add_argument('run_root')
    planned(sub, family_required=False)
    sub.add_argument('--watch', type=float, metavar='N', help='refresh every N seconds')
    stall(sub)
    sub = commands.add_parser('report', help='scripts/compare_runs.py on the finished runs')
    sub.add_argument('run_root')
    sub.add_argument('--at-tokens', type=int, help='compare at this evaluation (runs may be unfinished)')
    sub.add_argument('compare_args', nargs=argparse.REMAINDER, help='more compare_runs.py options')
    stall(sub)
    args = parser.parse_args(argv)
    bad = [o for o in getattr(args, 'overrides', []) if '=' not in o]
    if bad:
        parser.error(f'overrides must be key=value, got {bad}')
    try:
        return {'plan': cmd_plan, 'submit': cmd_submit, 'status': cmd_status, 'report': cmd_report}[args.command](args)
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    sys.exit(main())
