"""Preemption guarantees (docs/preemption.md), proven against a straight 12-batch run A.

Subprocess runs of ``composer train.py yamls/smoke_cpu.yaml`` (tiny model, 32-token sequences,
batch 4, checkpoint every 2 batches keeping 2, eval every 4, attention dropout so that the RNG
state matters), with every component that carries state across a restart switched on (``STATEFUL``:
an eps schedule, StochasTok, MLflow). Every interrupted run is restarted with the same command until
it finishes; its final checkpoint must equal A's bitwise (model, optimizer, scheduler, timestamp,
RNG, dataset position), its metrics.csv must have A's rows and, after SIGKILLs, MLflow must hold one
run with each value once. Plus unit tests of the checkpoint helpers.
"""

from __future__ import annotations

import csv
import logging
import logging.handlers
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from composer.core import Callback
from omegaconf import DictConfig

from lm_eval_helpers import load_script, train_tiny
from test_mlflow import assert_one_mlflow_run_with_each_csv_value_once
from prefix_composer.objectives import EpsSchedule
from prefix_composer.runtime.checkpoints import (
    CORRUPT_SUFFIX,
    LATEST_NAME,
    checkpoint_files,
    checkpoint_problem,
    prepare_autoresume,
    prune_checkpoints,
    select_resume_checkpoint,
)
from prefix_composer.runtime.experiment import RECORD_NAME
from prefix_composer.runtime.launch import checked_save_folder
from prefix_composer.runtime.run_folder import LOCK_NAME
from prefix_composer.runtime.run_record import RECORD_NAME as LAST_START_NAME
from prefix_composer.runtime.preemption import GracefulPreemption

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_BATCHES = 12
SAVE_EVERY = 2
KEEP = 2
SMOKE_OVERRIDES = [
    'max_seq_len=32', 'global_train_batch_size=4', 'device_train_microbatch_size=4', 'device_eval_batch_size=4',
    f'max_duration={MAX_BATCHES}ba', f'save_interval={SAVE_EVERY}ba', f'save_num_checkpoints_to_keep={KEEP}',
    'eval_interval=4ba', 'eval_subset_num_batches=2', 'console_log_interval=1ba', 'model.config.attention_dropout=0.1',
]
# The objective changes during the run (eps 0.5 until batch 4, linear to 0 at batch 10), the training
# batches are split at random (StochasTok), MLflow holds values back until a checkpoint: a resume must
# continue each of them exactly.
EPS_SCHEDULE = EpsSchedule('ptp', 0.5, t1=(4, 'ba'), t2=(10, 'ba'))
STATEFUL = [
    'algorithms.prefix_smoothing.eps={%s}' % ', '.join(f'{k}: {v}' for k, v in EPS_SCHEDULE.to_config().items()),
    'algorithms.stochastok.expand_prop=0.3',
    'loggers.mlflow.tracking_uri=file:${variables.run_root}/mlruns', 'loggers.mlflow.experiment_name=preemption',
]
OVERRIDES = [*SMOKE_OVERRIDES, *STATEFUL]
# Columns that measure wall-clock time and legitimately differ between runs.
TIMING_COLUMNS = re.compile(r'^(wall_time_s|throughput/.*|time/(train|val|total))$')
COMPOSER = (os.path.join(os.path.dirname(sys.executable), 'composer'),)  # the venv's, not PATH's
PYTHON = (sys.executable,)  # train.py without a launcher, for runs that do not test one
RUN_TIMEOUT_S = 1800  # generous: the shared CI machine can be very slow; runs poll, never sleep fixed times


# -- running training ---------------------------------------------------------------------
def command(tmp_path, mds, launcher=COMPOSER, script=('train.py',), overrides=OVERRIDES):
    return [*launcher, *script, 'yamls/smoke_cpu.yaml', *overrides,
            f'variables.run_root={tmp_path}', f'variables.data.mds_dir={mds}']


def start(tmp_path, mds, name, launcher=COMPOSER, script=('train.py',), overrides=OVERRIDES):
    """The smoke training in its own session, its output in ``<tmp_path>/<name>.log`` (``proc.log_path``)."""
    log_file = open(tmp_path / f'{name}.log', 'w')
    proc = subprocess.Popen(command(tmp_path, mds, launcher, script, overrides), cwd=REPO, stdout=log_file,
                            stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = tmp_path / f'{name}.log'
    return proc


def finish(proc) -> int:
    try:
        return proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def run_to_end(tmp_path, mds, name, launcher=COMPOSER, overrides=OVERRIDES):
    proc = start(tmp_path, mds, name, launcher, overrides=overrides)
    assert finish(proc) == 0, proc.log_path.read_text()[-5000:]
    return proc.log_path.read_text()


def straight(tmp_path_factory, mds, name, overrides=OVERRIDES):
    """A run of the smoke training to its end in a fresh folder, by ``python train.py`` (not the
    launcher, which it does not test); its log is ``<folder>/<name>.log``."""
    root = tmp_path_factory.mktemp(name)
    run_to_end(root, mds, name, launcher=PYTHON, overrides=overrides)
    return root


def wait_for(condition, proc, what):
    """Poll ``condition`` until true; fail if the run exits first."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not condition():
        assert proc.poll() is None, f'run exited ({proc.returncode}) before {what}:\n' + proc.log_path.read_text()[-5000:]
        assert time.monotonic() < deadline, f'timed out waiting for {what}'
        time.sleep(0.05)


def folder(tmp_path):
    return tmp_path / 'smoke_cpu' / 'checkpoints'


def ckpt(tmp_path, batch):
    return folder(tmp_path) / f'ep0-ba{batch}-rank0.pt'


def csv_batches(tmp_path) -> list[int]:
    path = tmp_path / 'smoke_cpu' / 'metrics.csv'
    if not path.exists():
        return []
    with open(path, newline='') as f:
        return [int(row['batch']) for row in csv.DictReader(f) if row.get('batch')]


def last_logged_batch(tmp_path) -> int:
    return max(csv_batches(tmp_path), default=0)


# -- comparing with run A -----------------------------------------------------------------
def metric_rows(run_root):
    with open(run_root / 'smoke_cpu' / 'metrics.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in row.items() if not TIMING_COLUMNS.match(k) and v != ''} for row in rows]


def tensors(obj, prefix=''):
    """Flatten nested dicts/lists to {path: tensor or plain value}."""
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in tensors(value, f'{prefix}/{key}').items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in tensors(value, f'{prefix}/{i}').items()}
    if hasattr(obj, 'dtype') and hasattr(obj, 'shape') and not isinstance(obj, torch.Tensor):  # numpy
        return {prefix: torch.as_tensor(obj)}
    return {prefix: obj}


def assert_equal_states(got, want, keys) -> int:
    """Assert two checkpoints' ``state[key]`` are equal for every key (tensors bitwise, wall-clock
    durations excepted); returns how many tensors were compared."""
    compared = 0
    for key in keys:
        flat_got, flat_want = tensors(got['state'][key]), tensors(want['state'][key])
        assert flat_got.keys() == flat_want.keys(), key
        for path, value in flat_want.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(flat_got[path], value), f'{key}{path} differs'
                compared += 1
            elif 'wct' not in path.lower():  # wall-clock durations differ
                assert flat_got[path] == value, f'{key}{path}: {flat_got[path]!r} != {value!r}'
    return compared


def assert_same_final_state(run_root, reference_root):
    got = torch.load(ckpt(run_root, MAX_BATCHES), map_location='cpu', weights_only=False)
    want = torch.load(ckpt(reference_root, MAX_BATCHES), map_location='cpu', weights_only=False)
    compared = assert_equal_states(got, want, ('model', 'optimizers', 'schedulers', 'timestamp', 'dataset_state'))
    rng_got, rng_want = tensors(got['rng']), tensors(want['rng'])
    assert rng_got.keys() == rng_want.keys()
    for path, value in rng_want.items():
        assert torch.equal(rng_got[path], value) if isinstance(value, torch.Tensor) else rng_got[path] == value, path
    assert compared > 20  # model weights and AdamW moments were really compared
    rows, reference_rows = metric_rows(run_root), metric_rows(reference_root)
    assert [(r['batch'], r['phase']) for r in rows] == [(r['batch'], r['phase']) for r in reference_rows]
    assert rows == reference_rows
    assert sum(r['phase'] == 'eval' for r in rows) == MAX_BATCHES // 4
    assert sorted(os.listdir(folder(run_root))) == sorted(
        [f'ep0-ba{MAX_BATCHES - SAVE_EVERY}-rank0.pt', f'ep0-ba{MAX_BATCHES}-rank0.pt', LATEST_NAME, RECORD_NAME, LOCK_NAME, LAST_START_NAME]
        + [n for n in os.listdir(folder(run_root)) if n.endswith(CORRUPT_SUFFIX)])


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory, tiny_mds):
    """Run A: 12 batches without interruption (``train.py`` without the launcher, which it does not test),
    with the ``STATEFUL`` components really at work: the scheduled eps per batch, split training batches."""
    root = straight(tmp_path_factory, tiny_mds, 'a')
    assert os.readlink(folder(root) / LATEST_NAME) == f'ep0-ba{MAX_BATCHES}-rank0.pt'
    with open(root / 'smoke_cpu' / 'metrics.csv', newline='') as f:
        train = [r for r in csv.DictReader(f) if r['phase'] == 'train']
    # batch b trains after b - 1 batches
    assert [float(r['objective/eps']) for r in train] == pytest.approx([EPS_SCHEDULE.at({'ba': b - 1}) for b in range(1, MAX_BATCHES + 1)])
    assert all(float(r['stochastok/split_prop']) > 0 for r in train)
    return root


# -- guarantee 1: SIGKILL at any batch ---------------------------------------------------
# One run killed twice and restarted after each kill (3 processes, not 2 per kill point). After
# batch 3: between the checkpoints of 2 and 4, before any eval (the restart redoes batch 3 and
# drops its row). After batch 8: a checkpoint and eval batch, so the kill lands in its eval, its
# save or just after them, and the restart resumes from 6 or 8.
KILL_AFTER = (3, 8)


def resumed_from(log: str) -> int:
    return int(re.search(r'Autoresume checkpoint: \S*ep0-ba(\d+)-rank0\.pt', log).group(1))


def test_sigkill_at_batches_between_and_on_checkpoints_resumes_bitwise_identically(tmp_path, tiny_mds, straight_run):
    """SIGKILL after batches 3 and 8 of one run (KILL_AFTER); every restart resumes from the newest
    checkpoint saved before the kill, and the final state equals run A's."""
    killed_at = 0
    for i, kill_after in enumerate([*KILL_AFTER, None]):
        proc = start(tmp_path, tiny_mds, f'b{i}')
        if kill_after is None:
            assert finish(proc) == 0, proc.log_path.read_text()[-5000:]
        else:
            assert kill_after > killed_at  # else the rows of the killed run would satisfy the wait at once
            wait_for(lambda: last_logged_batch(tmp_path) >= kill_after, proc, f'batch {kill_after}')
            os.killpg(proc.pid, signal.SIGKILL)
            assert finish(proc) == -signal.SIGKILL
        if i:
            resumed = resumed_from(proc.log_path.read_text())
            assert resumed % SAVE_EVERY == 0 and killed_at - SAVE_EVERY <= resumed <= killed_at
        if kill_after is not None:
            killed_at = last_logged_batch(tmp_path)
            assert kill_after <= killed_at < MAX_BATCHES
    assert_same_final_state(tmp_path, straight_run)
    assert_one_mlflow_run_with_each_csv_value_once(f'file:{tmp_path / "mlruns"}', 'preemption', tmp_path, MAX_BATCHES)


# -- guarantee 2: SIGTERM to the launcher --------------------------------------------------
def test_repeated_sigterms_save_the_current_batch_once_and_exit_zero(tmp_path, tiny_mds, straight_run):
    """SIGTERM to the launcher, then 0.5 s later to the launcher and its rank, then both once more:
    the rank finishes the batch it is on, saves one complete checkpoint of it and everything exits 0."""
    launcher = (sys.executable, '-m', 'prefix_composer.runtime.launcher')
    proc = start(tmp_path, tiny_mds, 'c1', launcher=launcher)
    wait_for(lambda: last_logged_batch(tmp_path) >= SAVE_EVERY + 1, proc, f'batch {SAVE_EVERY + 1}')
    seen = last_logged_batch(tmp_path)
    rank = psutil.Process(proc.pid).children()[0].pid
    os.kill(proc.pid, signal.SIGTERM)  # the launcher only, as Kubernetes signals PID 1
    for _ in range(2):  # repeated, and straight to the rank too, as a user's kill might
        time.sleep(0.5)
        for pid in (proc.pid, rank):
            if proc.poll() is None and psutil.pid_exists(pid):
                os.kill(pid, signal.SIGTERM)
    assert finish(proc) == 0, proc.log_path.read_text()[-5000:]
    log = proc.log_path.read_text()
    assert len(re.findall(r'Preempted: stopping at batch', log)) == 1, log[-5000:]
    stopped = int(re.search(r'Preempted: stopping at batch (\d+) with its checkpoint saved', log).group(1))
    assert seen < stopped < MAX_BATCHES  # the batch running at SIGTERM was finished, no later one
    assert ckpt(tmp_path, stopped).exists() and os.readlink(folder(tmp_path) / LATEST_NAME) == ckpt(tmp_path, stopped).name
    assert checkpoint_problem(str(ckpt(tmp_path, stopped))) is None
    assert not [n for n in os.listdir(folder(tmp_path)) if n.startswith('partial-')]
    assert last_logged_batch(tmp_path) == stopped

    log = run_to_end(tmp_path, tiny_mds, 'c2')
    assert f'Autoresume checkpoint: {ckpt(tmp_path, stopped)}' in log
    assert_same_final_state(tmp_path, straight_run)


# -- guarantee 3: kill mid-save, truncated newest checkpoint, missing symlink -------------
def test_kill_mid_save_truncated_checkpoint_and_missing_symlink(tmp_path, tiny_mds, straight_run):
    proc = start(tmp_path, tiny_mds, 'd1', launcher=PYTHON, script=('tests/train_killed_mid_save.py', '6'))
    assert finish(proc) != 0
    names = sorted(os.listdir(folder(tmp_path)))
    assert names == sorted(['ep0-ba2-rank0.pt', 'ep0-ba4-rank0.pt', LATEST_NAME, 'partial-ep0-ba6-rank0.pt', RECORD_NAME, LOCK_NAME, LAST_START_NAME])
    assert os.readlink(folder(tmp_path) / LATEST_NAME) == 'ep0-ba4-rank0.pt'  # never pointed at the half-save
    newest = ckpt(tmp_path, 4)
    os.truncate(newest, newest.stat().st_size // 2)  # as a non-atomic write cut off by a kill
    os.remove(folder(tmp_path) / LATEST_NAME)

    log = run_to_end(tmp_path, tiny_mds, 'd2', launcher=PYTHON)
    assert f'Skipping checkpoint {newest}' in log and 'partial-ep0-ba6-rank0.pt' in log
    assert f'Autoresume checkpoint: {ckpt(tmp_path, 2)}' in log
    assert (folder(tmp_path) / (newest.name + CORRUPT_SUFFIX)).exists()
    assert_same_final_state(tmp_path, straight_run)


# -- unit tests of the start-up selection and retention -----------------------------------
def fake_checkpoint(path, payload=b'x' * 1000):
    torch.save({'payload': payload}, path)


def test_select_resume_checkpoint_skips_broken_and_repoints_latest(tmp_path, caplog):
    for batch in (2, 4, 6, 8):
        fake_checkpoint(tmp_path / f'ep0-ba{batch}-rank0.pt')
    os.truncate(tmp_path / 'ep0-ba8-rank0.pt', 100)
    data = bytearray((tmp_path / 'ep0-ba6-rank0.pt').read_bytes())
    data[data.find(b'x' * 1000) + 500] ^= 0xFF  # a flipped bit inside a stored entry: CRC mismatch
    (tmp_path / 'ep0-ba6-rank0.pt').write_bytes(bytes(data))
    (tmp_path / 'partial-ep0-ba10-rank0.pt').write_bytes(b'half')
    os.symlink('ep0-ba8-rank0.pt', tmp_path / LATEST_NAME)

    with caplog.at_level(logging.WARNING, logger='prefix_composer.runtime.checkpoints'):
        chosen = select_resume_checkpoint(str(tmp_path))
    assert chosen == str(tmp_path / 'ep0-ba4-rank0.pt')
    assert os.readlink(tmp_path / LATEST_NAME) == 'ep0-ba4-rank0.pt'
    assert sorted(os.listdir(tmp_path)) == ['ep0-ba2-rank0.pt', 'ep0-ba4-rank0.pt', 'ep0-ba6-rank0.pt.corrupt',
                                            'ep0-ba8-rank0.pt.corrupt', LATEST_NAME]
    assert 'ep0-ba8-rank0.pt (BadZipFile' in caplog.text and 'ep0-ba6-rank0.pt (' in caplog.text
    assert 'partial-ep0-ba10-rank0.pt' in caplog.text


def test_select_resume_checkpoint_refuses_to_restart_from_scratch(tmp_path):
    assert select_resume_checkpoint(str(tmp_path / 'missing')) is None
    assert select_resume_checkpoint(str(tmp_path)) is None  # empty folder: fresh start
    (tmp_path / 'ep0-ba2-rank0.pt').write_bytes(b'not a zip')
    with pytest.raises(RuntimeError, match='refusing to restart from batch 0'):
        select_resume_checkpoint(str(tmp_path))


def test_prune_keeps_the_newest_across_processes(tmp_path):
    for batch in (2, 4, 10, 12, 6):
        fake_checkpoint(tmp_path / f'ep0-ba{batch}-rank0.pt')
    deleted = prune_checkpoints(str(tmp_path), 2)
    assert sorted(os.path.basename(p) for p in deleted) == ['ep0-ba2-rank0.pt', 'ep0-ba4-rank0.pt', 'ep0-ba6-rank0.pt']
    assert [os.path.basename(p) for p in checkpoint_files(str(tmp_path))] == ['ep0-ba12-rank0.pt', 'ep0-ba10-rank0.pt']


# -- several ranks: all stop after the same batch, rank 0 alone saves and checks -----------
class SigtermAt(Callback):
    """Sends SIGTERM to this process at ``BATCH_END`` of ``batch`` if it is global rank ``rank``."""

    def __init__(self, rank: int, batch: int):
        self.rank, self.batch = rank, batch

    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == self.batch and torch.distributed.get_rank() == self.rank:
            os.kill(os.getpid(), signal.SIGTERM)


def preempted_rank(rank: int, world_size: int, port: int, args: dict) -> dict:
    """One gloo rank training ``train_tiny`` with ``graceful_preemption``; SIGTERM reaches rank 1 only."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
                      NODE_RANK='0', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    records = logging.handlers.BufferingHandler(10_000)
    logging.getLogger('prefix_composer.runtime.preemption').addHandler(records)
    logging.getLogger('prefix_composer.runtime.preemption').setLevel(logging.INFO)
    preemption = GracefulPreemption(grace_seconds=args['grace_seconds'])
    try:
        train_tiny(args['tokenizer'], '6ba', callbacks=[SigtermAt(rank=1, batch=2), preemption],
                   save_folder=args['folder'], save_interval='4ba')
        code = 'finished'
    except SystemExit as e:
        code = e.code
    return {'code': code, 'got_sigterm': preemption.signal_time is not None,
            'log': [(r.levelname, r.getMessage()) for r in records.buffer]}


def test_two_ranks_stop_after_the_batch_only_rank_1_got_sigterm_for_and_rank_0_saves_it(tokenizer, tmp_path):
    """Two gloo ranks (forked): rank 1 gets SIGTERM in batch 2, rank 0 none. The all-reduce makes both
    stop after batch 2 with exit 0; only rank 0 writes (the batch-2 checkpoint, with both ranks' RNG).
    Rank 1 waited longer than its 1 ms grace (the save): a warning; rank 0 never got the signal: info."""
    folder_ = tmp_path / 'checkpoints'
    ranks = load_script('bench_lm_eval').run_processes(
        preempted_rank, 2, {'tokenizer': tokenizer, 'folder': str(folder_), 'grace_seconds': 0.001})
    assert [r['code'] for r in ranks] == [0, 0]
    assert [r['got_sigterm'] for r in ranks] == [False, True]
    preempted = [[(level, m) for level, m in r['log'] if m.startswith('Preempted: ')] for r in ranks]
    assert [len(p) for p in preempted] == [1, 1]
    assert [level for (level, _), in preempted] == ['INFO', 'WARNING']
    assert all(m.startswith('Preempted: stopping at batch 2 with its checkpoint saved, ') for (_, m), in preempted)
    assert ' 0.0 s after SIGTERM (grace 0 s)' in preempted[0][0][1]
    assert sorted(os.listdir(folder_)) == ['ep0-ba2-rank0.pt', LATEST_NAME]
    saved = torch.load(folder_ / 'ep0-ba2-rank0.pt', map_location='cpu', weights_only=False)
    timestamp = saved['state']['timestamp']['Timestamp']
    assert (timestamp['batch'], timestamp['sample']) == (2, 2 * 2 * 4)  # 2 batches of 4 samples on each of 2 ranks
    assert len(saved['rng']) == 2


def broken_checkpoint_folder(root):
    """A run folder with a truncated newest checkpoint, a stale temp file and ``latest`` on the broken one."""
    run = root / 'r' / 'checkpoints'
    run.mkdir(parents=True)
    for batch in (2, 4):
        fake_checkpoint(run / f'ep0-ba{batch}-rank0.pt')
    os.truncate(run / 'ep0-ba4-rank0.pt', 100)
    (run / 'partial-ep0-ba6-rank0.pt').write_bytes(b'half')
    os.symlink('ep0-ba4-rank0.pt', run / LATEST_NAME)
    return run


def autoresume_config(folder_, **extra):
    return DictConfig({'save_folder': str(folder_), 'autoresume': True, 'run_name': 'r', **extra})


def test_only_global_rank_0_checks_and_repairs_the_checkpoint_folder(tmp_path, monkeypatch):
    run = broken_checkpoint_folder(tmp_path)
    cfg = autoresume_config(tmp_path / '{run_name}' / 'checkpoints')
    before = sorted(os.listdir(run))
    monkeypatch.setenv('RANK', '1')
    assert prepare_autoresume(cfg) is None
    assert sorted(os.listdir(run)) == before and os.readlink(run / LATEST_NAME) == 'ep0-ba4-rank0.pt'
    monkeypatch.setenv('RANK', '0')
    assert prepare_autoresume(cfg) == str(run / 'ep0-ba2-rank0.pt')
    assert sorted(os.listdir(run)) == ['ep0-ba2-rank0.pt', 'ep0-ba4-rank0.pt.corrupt', LATEST_NAME]


@pytest.mark.parametrize('key', ['save_filename', 'save_latest_filename'])
def test_preflight_refuses_other_checkpoint_names(tmp_path, key):
    run = broken_checkpoint_folder(tmp_path)
    before = sorted(os.listdir(run))
    with pytest.raises(ValueError, match=r'^autoresume pre-flight needs the default save_filename '
                                         r'\(ep\{epoch\}-ba\{batch\}-rank\{rank\}\.pt\) and save_latest_filename '
                                         r'\(latest-rank\{rank\}\.pt\)\.$'):
        prepare_autoresume(autoresume_config(tmp_path / '{run_name}' / 'checkpoints', **{key: 'ba{batch}-{rank}.pt'}))
    assert sorted(os.listdir(run)) == before


def test_preflight_warns_that_a_remote_folder_is_not_checked(caplog):
    cfg = autoresume_config('s3://bucket/{run_name}/checkpoints')
    with caplog.at_level(logging.WARNING, logger='prefix_composer.runtime'):
        assert prepare_autoresume(cfg) is None and checked_save_folder(cfg) is None
    assert [r.getMessage() for r in caplog.records] == [
        'save_folder s3://bucket/{run_name}/checkpoints is remote: its checkpoints, run lock and experiment record '
        'are not checked at start-up.']


def test_graceful_preemption_refuses_to_start_without_checkpoints(tokenizer):
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ValueError, match=r'^callbacks\.graceful_preemption\.grace_seconds must be a number of seconds '
                                         r'> 0, got 0\.$'):
        GracefulPreemption(grace_seconds=0)
    with pytest.raises(ValueError, match=r'^graceful_preemption needs checkpoints: set save_folder '
                                         r'\(and autoresume: true\)\.$'):
        train_tiny(tokenizer, '1ba', callbacks=[GracefulPreemption()])
    assert signal.getsignal(signal.SIGTERM) is handler  # not replaced
