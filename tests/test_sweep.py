"""scripts/sweep.py and prefix_composer/runtime/sweep.py: run states from crafted run folders, the
plan, submit --dry-run against a fake runai, and report's refusal while runs are unfinished."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types

import pytest

from prefix_composer.files import write_json_atomic
from prefix_composer.runtime.run_folder import lock_run_folder
from prefix_composer.runtime.run_record import RECORD_NAME as LAST_START
from prefix_composer.runtime.sweep import gpu_hours, max_tokens, plan_run, run_status

from lm_eval_helpers import load_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOW = time.time()
HOUR = 3600.0
STALL = HOUR
HEADER = 'batch,tokens,wall_time_s,phase,loss/train/total,metrics/eval/LanguageCrossEntropy\n'
# 100 batches of 8 x 128 tokens = 102,400 tokens to train.
EXPERIMENT = {'experiment': {'global_train_batch_size': 8, 'max_seq_len': 128}, 'settings': {'max_duration': '100ba'}}


def make_run(root, name, state=None, age_s=60.0, holder=None, starts=1, diverged=None, error=None, evals=0):
    """A run folder at 20 batches: CSV rows at 10 and 20 (10 batches in 5 s), eval at 20, checkpoints
    of 10 and 20, ``last_start.json`` in ``state`` (None: no record); every file written ``age_s`` ago."""
    folder = root / name
    save = folder / 'checkpoints'
    save.mkdir(parents=True)
    (folder / 'metrics.csv').write_text(HEADER + '10,10240,5.0,train,3.5,\n20,20480,10.0,train,3.25,\n'
                                        '20,20480,10.0,eval,,3.4\n')
    for batch in (10, 20):
        (save / f'ep0-ba{batch}-rank0.pt').write_bytes(b'x')
    write_json_atomic(str(save / 'experiment.json'), EXPERIMENT)
    if state is not None:
        write_json_atomic(str(save / LAST_START), {'state': state, 'starts': starts, 'diverged': diverged, 'error': error})
    if holder is not None:
        (save / 'run.lock').write_text(f'host {holder[0]}, pid {holder[1]}, started 2026-12-01T10:00:00+00:00\n')
    if evals:
        (folder / 'lm_eval').mkdir()
        for batch in range(evals):
            (folder / 'lm_eval' / f'ba{10 * (batch + 1)}.jsonl.gz').write_bytes(b'')
    for path in [*folder.rglob('*'), folder]:
        os.utime(path, (NOW - age_s, NOW - age_s))
    return folder


def status(folder):
    return run_status(str(folder), STALL, now=NOW, this_host='login-node')


def test_every_state_from_crafted_folders(tmp_path):
    dead_pid = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True,
                              text=True).stdout.strip()
    runs = {
        'fresh': make_run(tmp_path, 'fresh', 'running', holder=('gpu-node-7', 1234)),  # another host, heartbeat 60 s ago
        'graceful': make_run(tmp_path, 'graceful', 'preempted', starts=3),
        'killed': make_run(tmp_path, 'killed', 'running', holder=('login-node', dead_pid)),  # this host, no kernel lock
        'dead_host': make_run(tmp_path, 'dead_host', 'running', age_s=5 * HOUR, holder=('gpu-node-3', 99)),
        'waited_long': make_run(tmp_path, 'waited_long', 'preempted', age_s=2 * HOUR),
        'finished': make_run(tmp_path, 'finished', 'finished', age_s=9 * HOUR, starts=2),
        'failed': make_run(tmp_path, 'failed', 'failed', error='RuntimeError: CUDA error: an illegal memory access'),
        'diverged': make_run(tmp_path, 'diverged', 'diverged', diverged={
            'batch': 21, 'metric': 'loss/train/total', 'value': 'nan', 'last_finite_batch': 20, 'last_finite_loss': 3.25}),
        'no_record': make_run(tmp_path, 'no_record', age_s=3 * HOUR),  # made before start records: judged by its age
    }
    (tmp_path / 'empty').mkdir()
    got = {name: status(folder) for name, folder in runs.items()}
    assert {name: s.state for name, s in got.items()} == {
        'fresh': 'running', 'graceful': 'preempted and waiting', 'killed': 'preempted and waiting',
        'dead_host': 'stalled', 'waited_long': 'stalled', 'finished': 'finished', 'failed': 'failed',
        'diverged': 'diverged', 'no_record': 'stalled'}
    assert status(tmp_path / 'empty').state == 'not started'
    assert status(tmp_path / 'never_made').state == 'not started'
    assert {n for n, s in got.items() if s.needs_attention} == {'dead_host', 'waited_long', 'failed', 'diverged', 'no_record'}
    assert 'gpu-node-3 pid 99' in got['dead_host'].note and '5.0h' in got['dead_host'].note
    assert 'diverged at batch 21 (loss/train/total = nan), last finite loss 3.25' == got['diverged'].note
    assert got['failed'].note.startswith('RuntimeError: CUDA error')
    assert got['fresh'].note == 'on gpu-node-7'

    row = got['graceful']
    assert (row.tokens_done, row.tokens_max, row.checkpoint_batch, row.restarts) == (20480, 102400, 20, 2)
    assert (row.train_loss, row.val_nll, row.tokens_per_s) == (3.25, 3.4, 2048.0)  # 10,240 tokens in 5 s
    assert row.eta_s == pytest.approx((102400 - 20480) / 2048.0) and row.checkpoint_age_s == pytest.approx(60.0)
    assert got['finished'].eta_s is None and got['finished'].restarts == 1


def test_a_run_holding_its_lock_on_this_host_is_running_whatever_the_age(tmp_path):
    folder = make_run(tmp_path, 'live', 'running', age_s=30 * HOUR)
    lock = lock_run_folder(str(folder / 'checkpoints'))  # this process: in the kernel's lock table
    try:
        live = run_status(str(folder), STALL, now=NOW)
        assert live.state == 'running' and 'no heartbeat for 30.0h (hung?)' in live.note and live.needs_attention
    finally:
        lock.close()
    assert run_status(str(folder), STALL, now=NOW).state == 'stalled'  # released: nothing holds it


def test_tokens_and_gpu_hours():
    assert max_tokens('2000000000tok', 256, 2048) == 2_000_000_000
    assert max_tokens('3815ba', 256, 2048) == 3815 * 256 * 2048
    assert max_tokens('1ep', 256, 2048) is None
    assert gpu_hours(36_000_000, 10_000) == pytest.approx(1.0)
    run = plan_run('ce', 1, os.path.join(REPO, 'yamls', 'replicas', 'ce_seed1.yaml'), ['variables.run_root=/x'])
    assert (run.run_name, run.save_folder, run.run_folder, run.tokens) == (
        'ce_seed1', '/x/ce_seed1/checkpoints', '/x/ce_seed1', 2_000_000_000)


sys.path.insert(0, os.path.join(REPO, 'scripts'))  # its sibling scripts, as `python scripts/sweep.py` has them
SWEEP = load_script('sweep')


@pytest.fixture
def sweep(capfd, monkeypatch):
    """``python scripts/sweep.py ARGS`` from the repository root, run in this process (a subprocess would
    spend seconds on imports): the exit status, stdout and stderr as ``subprocess.run`` gives them,
    captured at the file descriptors (``submit`` prints through its Run:ai script)."""
    monkeypatch.chdir(REPO)

    def run(*args):
        try:
            status = SWEEP.main(list(args))
        except SystemExit as stop:  # a refusal: Python prints the message to stderr and exits 1
            status = stop.code if isinstance(stop.code, int) else 1
            if not isinstance(stop.code, int):
                print(stop.code, file=sys.stderr)
        out, err = capfd.readouterr()
        return types.SimpleNamespace(returncode=status, stdout=out, stderr=err)

    return run


def test_status_table_and_exit_status(tmp_path, sweep):
    make_run(tmp_path, 'ce', 'finished')
    ok = sweep('status', str(tmp_path), 'brief001', f'variables.run_root={tmp_path}', '--variants', 'ce',
               'label_smoothing', '--seeds', '0')
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[1].split()[:2] == ['run', 'state']
    assert lines[2].split()[:5] == ['ce', 'finished', '20,480', '/', '102,400']
    assert lines[3].split()[:3] == ['label_smoothing', 'not', 'started']
    make_run(tmp_path, 'ce_seed1', 'failed', error='ValueError: bad shard')
    bad = sweep('status', str(tmp_path))
    assert bad.returncode == 1 and 'needs attention: ce_seed1' in bad.stdout


def test_submit_dry_run_skips_finished_and_live_runs(tmp_path, sweep, monkeypatch):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'runai').write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" >> {tmp_path / "argv"}\n')
    (bin_dir / 'runai').chmod(0o755)
    runs = tmp_path / 'runs'
    make_run(runs, 'ce', 'finished')
    live = make_run(runs, 'label_smoothing', 'running')
    make_run(runs, 'prefix_simple', 'preempted')
    monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
    lock = lock_run_folder(str(live / 'checkpoints'))
    try:
        done = sweep('submit', 'brief001', f'variables.run_root={runs}', '--dry-run', '--seeds', '0',
                     '--variants', 'ce', 'label_smoothing', 'prefix_simple', 'prefix_norm_eps1')
    finally:
        lock.close()
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert out[0] == 'skip   ce: finished' and out[1] == 'skip   label_smoothing: running'
    assert out[2] == 'submit prefix_simple (preempted and waiting): yamls/prefix_simple.yaml'
    assert out[3].startswith('runai training submit prefix-simple ') and out[3].endswith(
        f'train.py yamls/prefix_simple.yaml variables.run_root={runs}')
    assert out[4] == 'submit prefix_norm_eps1 (not started): yamls/prefix_norm_eps1.yaml'
    assert out[5].startswith('runai training submit prefix-norm-eps1 ')
    assert len(out) == 6 and not (tmp_path / 'argv').exists()  # dry run: runai never called


def test_plan_lists_runs_and_gpu_hours_and_refuses_missing_replicas(sweep):
    done = sweep('plan', 'brief000', '--variants', 'b000_ce', '--seeds', '0', '1', '--tokens-per-s-per-gpu', '50000')
    assert done.returncode == 0, done.stderr
    assert 'yamls/replicas/b000_ce_seed1.yaml' in done.stdout and '/mnt/runs/b000_ce_seed1/checkpoints' in done.stdout
    hours = gpu_hours(2 * 2_000_000_000, 50_000)
    assert '2 runs, 4,000,000,000 tokens in all.' in done.stdout and f'{hours:,.0f} GPU-hours' in done.stdout
    missing = sweep('plan', 'brief001', '--seeds', '7')
    assert missing.returncode != 0 and 'make_yamls.py --seeds 7' in missing.stderr
    unknown = sweep('plan', 'brief009')
    assert unknown.returncode != 0 and "unknown family 'brief009'" in unknown.stderr


def test_report_refuses_while_a_compared_run_is_unfinished(tmp_path, sweep):
    make_run(tmp_path, 'ce', 'finished', evals=2)
    make_run(tmp_path, 'prefix_simple', 'preempted', evals=1)
    done = sweep('report', str(tmp_path))
    assert done.returncode == 2
    assert '1 compared runs are not finished: prefix_simple (preempted and waiting)' in done.stderr
    assert '--at-tokens' in done.stderr
    assert json.loads((tmp_path / 'ce' / 'checkpoints' / LAST_START).read_text())['state'] == 'finished'
