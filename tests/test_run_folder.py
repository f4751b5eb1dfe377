"""Start-up guards on the run folder (docs/preemption.md): the experiment record, the run lock,
writable output folders, stale Streaming shared memory. Mostly in-process on the functions; two
subprocess runs of ``python train.py`` check that the real command stops before the model."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import signal
import subprocess
import sys

import pytest
import pandas as pd
from streaming import StreamingDataset
from streaming.base.constant import SHM_TO_CLEAN
from streaming.base.shared.prefix import _get_path

from prefix_composer.runtime.experiment import ALLOW_KEY, RECORD_NAME, check_experiment, take_allowed_changes
from prefix_composer.runtime.launch import checked_save_folder
from prefix_composer.runtime.run_folder import LOCK_NAME, RunFolderBusy, check_writable, lock_run_folder
from prefix_composer.runtime.shared_memory import SHM_DIR, clean_stale_streaming_shm

from lm_eval_helpers import load_script

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, 'yamls', 'smoke_cpu.yaml')
CASES = load_script('bad_inputs_table')  # owner of the run-folder world shared with docs/bad_inputs.md
smoke_overrides, smoke, folder_of, record = CASES.smoke_overrides, CASES.smoke, CASES.folder_of, CASES.record
started, fake_checkpoint, UNWRITABLE_FOLDERS = CASES.started, CASES.fake_checkpoint, CASES.UNWRITABLE_FOLDERS
STARTUP_TIMEOUT_S = 600  # the shared test machine can be very slow to import the training stack


# -- the experiment record ------------------------------------------------------------------
def test_same_experiment_resumes_and_changed_settings_are_logged(tiny_mds, tmp_path, caplog):
    first = started(tiny_mds, tmp_path, 'scheduler.t_max=60ba')
    assert first['experiment']['seed'] == 17 and first['settings']['max_duration'] == '30ba'
    assert first['experiment']['data.train_loader.index_sha256'] is not None  # the MDS split's index is hashed
    # the schedule as it runs: every parameter of cosine_with_warmup, the defaults included
    assert {k: v for k, v in first['experiment'].items() if k.startswith('scheduler.')} == {
        'scheduler.name': 'cosine_with_warmup', 'scheduler.t_warmup': '4ba', 'scheduler.t_max': '60ba',
        'scheduler.alpha_f': 0.1, 'scheduler.scale_warmup': False}
    with caplog.at_level(logging.INFO, logger='prefix_composer'):  # extending up to the absolute t_max
        check_experiment(smoke(tiny_mds, tmp_path, 'max_duration=60ba', 'save_interval=5ba', 'scheduler.t_max=60ba'),
                         str(folder_of(tmp_path)), resuming=True)
    assert 'max_duration: "30ba" -> "60ba"; save_interval: "10ba" -> "5ba"' in caplog.text
    now = record(tmp_path)
    assert now['experiment'] == first['experiment'] and now['started'] == first['started'] and now['changes'] == []
    assert now['settings']['max_duration'] == '60ba'


@pytest.mark.parametrize('override, changed', [
    ('seed=18', 'seed: 17 -> 18'),
    ('algorithms.prefix_smoothing.eps=0.5', 'algorithms.prefix_smoothing.eps: 1.0 -> 0.5'),
    ('variables.global_seed=18', 'seed: 17 -> 18; train_loader.dataset.shuffle_seed: 17 -> 18'),
    ('precision=amp_bf16', 'precision: "fp32" -> "amp_bf16"'),
    ('max_duration=60ba', 'scheduler.t_max: "30ba" -> "60ba"'),  # t_max=1dur follows max_duration
])
def test_changed_experiment_is_refused_naming_both_values(override, changed, tiny_mds, tmp_path):
    before = started(tiny_mds, tmp_path)
    keys = ','.join(part.split(':')[0] for part in changed.split('; '))
    with pytest.raises(ValueError, match='holds checkpoints of another experiment') as refused:
        check_experiment(smoke(tiny_mds, tmp_path, override), str(folder_of(tmp_path)), resuming=True)
    message = str(refused.value)
    assert f'Changed since {folder_of(tmp_path) / RECORD_NAME}: {changed}. ' in message
    assert 'run_name=<new name>' in message and f'{ALLOW_KEY}=[{keys}]' in message
    assert record(tmp_path) == before


def test_changed_data_is_refused(tiny_mds, tmp_path_factory):
    run_root = tmp_path_factory.mktemp('runs')
    started(tiny_mds, run_root)
    other = tmp_path_factory.mktemp('other_mds')
    for split in ('train', 'val'):  # the same MDS content, but the train split indexed differently
        os.makedirs(other / split)
        index = json.loads((tiny_mds / split / 'index.json').read_text())
        index['shards'] = index['shards'] * (2 if split == 'train' else 1)
        (other / split / 'index.json').write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r'data\.train_loader\.index_sha256: "[0-9a-f]{64}" -> "[0-9a-f]{64}"\. '):
        check_experiment(smoke(other, run_root), str(folder_of(run_root)), resuming=True)


def test_allowed_change_resumes_and_is_recorded(tiny_mds, tmp_path, caplog):
    started(tiny_mds, tmp_path)
    cfg = smoke(tiny_mds, tmp_path, 'algorithms.prefix_smoothing.eps=0.5', f'{ALLOW_KEY}=[algorithms.prefix_smoothing]')
    allowed = take_allowed_changes(cfg)
    assert allowed == ('algorithms.prefix_smoothing',) and ALLOW_KEY not in cfg  # llm-foundry never sees it
    check_experiment(cfg, str(folder_of(tmp_path)), resuming=True, allowed=allowed)
    assert 'deliberate experiment change (allow_experiment_change): algorithms.prefix_smoothing.eps: 1.0 -> 0.5' in caplog.text
    now = record(tmp_path)
    assert now['experiment']['algorithms.prefix_smoothing.eps'] == 0.5
    assert [c['experiment'] for c in now['changes']] == [{'algorithms.prefix_smoothing.eps': [1.0, 0.5]}]
    # the next restart of the changed run needs no override; going back to 1.0 would
    with pytest.raises(ValueError, match=r'eps: 0\.5 -> 1\.0'):
        check_experiment(smoke(tiny_mds, tmp_path), str(folder_of(tmp_path)), resuming=True)
    check_experiment(smoke(tiny_mds, tmp_path, 'algorithms.prefix_smoothing.eps=0.5'), str(folder_of(tmp_path)), resuming=True)


def test_checkpoints_without_record_get_one_with_a_warning_and_a_fresh_start_replaces_it(tiny_mds, tmp_path, caplog):
    os.makedirs(folder_of(tmp_path))
    check_experiment(smoke(tiny_mds, tmp_path), str(folder_of(tmp_path)), resuming=True)
    assert 'has checkpoints but no experiment.json' in caplog.text and record(tmp_path)['experiment']['seed'] == 17
    # no checkpoint to resume (e.g. the first start failed before batch 1): nothing to mix, the new config is recorded
    check_experiment(smoke(tiny_mds, tmp_path, 'seed=18'), str(folder_of(tmp_path)), resuming=False)
    assert record(tmp_path)['experiment']['seed'] == 18


def train_start(mds, run_root, *extra) -> subprocess.CompletedProcess:
    """``python train.py`` on the smoke YAML: the checks run in the rank, the launcher only relays them
    (test_preemption restarts runs through ``composer``)."""
    return subprocess.run([sys.executable, 'train.py', SMOKE, *smoke_overrides(mds, run_root), *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S)


def test_train_py_refuses_a_changed_seed_before_building_the_model(tiny_mds, tmp_path):
    started(tiny_mds, tmp_path)
    fake_checkpoint(tmp_path)
    done = train_start(tiny_mds, tmp_path, 'seed=18')
    assert done.returncode != 0
    assert (f'{folder_of(tmp_path)} holds checkpoints of another experiment: resuming them with this config would '
            f'mix two experiments. Changed since {folder_of(tmp_path) / RECORD_NAME}: seed: 17 -> 18. Start a new run '
            f'folder with run_name=<new name>, or, if the change is deliberate, add {ALLOW_KEY}=[seed]') in done.stderr
    assert 'Building tokenizer...' not in done.stderr  # llm-foundry's train() was never entered
    assert not (tmp_path / 'smoke_cpu' / 'metrics.csv').exists()


def test_train_py_refuses_a_max_duration_that_would_restretch_the_cosine(tiny_mds, tmp_path):
    """yamls/smoke_cpu.yaml leaves t_max at Composer's 1dur: extending the run would stretch the
    cosine over the batches already trained."""
    started(tiny_mds, tmp_path)
    fake_checkpoint(tmp_path)
    done = train_start(tiny_mds, tmp_path, 'max_duration=60ba')
    assert done.returncode != 0
    assert (f'Changed since {folder_of(tmp_path) / RECORD_NAME}: scheduler.t_max: "30ba" -> "60ba". The LR schedule '
            'would change at the batches already trained or still to come: cosine_with_warmup(t_warmup=4ba, '
            't_max=30ba, alpha_f=0.1, scale_warmup=False) -> cosine_with_warmup(t_warmup=4ba, t_max=60ba, alpha_f=0.1, '
            'scale_warmup=False) (durations relative to max_duration follow it: max_duration 30ba -> 60ba; '
            'scheduler.t_max defaults to 1dur). To keep the recorded curve, set scheduler.t_max=30ba in the YAML '
            '(absolute: max_duration may then change up to scheduler.t_max). Start a new run folder with '
            f'run_name=<new name>, or, if the change is deliberate, add {ALLOW_KEY}=[scheduler.t_max]') in done.stderr, \
        done.stderr[-3000:]
    assert 'Building tokenizer...' not in done.stderr
    assert not (tmp_path / 'smoke_cpu' / 'metrics.csv').exists()


LR_COLUMN = 'lr-DecoupledAdamW/group0'
SMOKE_LR, SMOKE_WARMUP, SMOKE_ALPHA_F = 3.0e-3, 4, 0.1  # yamls/smoke_cpu.yaml's optimizer.lr and scheduler


def cosine_with_warmup_lr(batches_done: int, t_max: int) -> float:
    """The LR after ``batches_done`` batches: linear warmup over SMOKE_WARMUP batches, then a cosine
    from SMOKE_LR to SMOKE_ALPHA_F * SMOKE_LR at batch ``t_max`` (math, float64)."""
    if batches_done < SMOKE_WARMUP:
        return SMOKE_LR * batches_done / SMOKE_WARMUP
    frac = min(1.0, (batches_done - SMOKE_WARMUP) / (t_max - SMOKE_WARMUP))
    return SMOKE_LR * (SMOKE_ALPHA_F + (1 - SMOKE_ALPHA_F) * 0.5 * (1 + math.cos(math.pi * frac)))


def logged_lrs(run_root) -> dict[int, float]:
    with open(run_root / 'smoke_cpu' / 'metrics.csv', newline='') as f:
        return {int(row['batch']): float(row[LR_COLUMN]) for row in csv.DictReader(f)
                if row['phase'] == 'train' and row.get(LR_COLUMN)}


def test_extending_a_run_with_an_absolute_t_max_continues_its_lr_curve(tiny_mds, tmp_path):
    """An 8-batch cosine trained 4 batches, then extended to 8: the LR read back from metrics.csv at
    every batch is the uninterrupted curve's. Dropping the pin (t_max back to 1dur) is refused."""
    leg = ('save_interval=4ba', 'console_log_interval=1ba', 'eval_interval=4ba', 'eval_subset_num_batches=1')
    first = train_start(tiny_mds, tmp_path, 'max_duration=4ba', 'scheduler.t_max=8ba', *leg)
    assert first.returncode == 0, first.stderr[-5000:]
    assert (folder_of(tmp_path) / 'ep0-ba4-rank0.pt').exists()

    forgot = train_start(tiny_mds, tmp_path, 'max_duration=6ba', *leg)  # t_max=1dur would make it 6ba
    assert forgot.returncode != 0
    assert ('scheduler.t_max: "8ba" -> "6ba". The LR schedule would change' in forgot.stderr
            and 'set scheduler.t_max=8ba in the YAML' in forgot.stderr), forgot.stderr[-5000:]
    assert 'Building tokenizer...' not in forgot.stderr and sorted(logged_lrs(tmp_path)) == [1, 2, 3, 4]

    first_rows = pd.read_csv(tmp_path / 'smoke_cpu' / 'metrics.csv').drop(columns='wall_time_s')
    extended = train_start(tiny_mds, tmp_path, 'max_duration=8ba', 'scheduler.t_max=8ba', *leg)
    assert extended.returncode == 0, extended.stderr[-5000:]
    assert 'Resuming from checkpoint' in extended.stderr or 'ep0-ba4-rank0.pt' in extended.stderr
    rows = pd.read_csv(tmp_path / 'smoke_cpu' / 'metrics.csv').drop(columns='wall_time_s')
    assert rows[rows.phase == 'train'].batch.tolist() == list(range(1, 9))  # continued at 5, nothing twice
    assert rows[rows.phase == 'eval'].batch.tolist() == [4, 8]
    kept = rows[rows.batch <= 4].reset_index(drop=True)  # the first leg's rows are kept as they were
    pd.testing.assert_frame_equal(kept[first_rows.columns], first_rows)
    lrs = logged_lrs(tmp_path)
    assert sorted(lrs) == list(range(1, 9))
    # Composer steps the scheduler before it advances the batch counter: the LR logged at batch b is
    # the schedule's value after b - 1 batches (the LR batch b + 1 trains with).
    for batch, lr in lrs.items():
        assert lr == pytest.approx(cosine_with_warmup_lr(batch - 1, t_max=8), rel=1e-6, abs=1e-12), batch
    assert record(tmp_path)['experiment']['scheduler.t_max'] == '8ba' and record(tmp_path)['changes'] == []


# -- the run lock ---------------------------------------------------------------------------
def test_lock_is_exclusive_and_released_on_close(tmp_path):
    first = lock_run_folder(str(tmp_path))
    assert (tmp_path / LOCK_NAME).read_text().startswith(f'host {os.uname().nodename}, pid {os.getpid()}, started ')
    with pytest.raises(RunFolderBusy, match=f'is in use by another live run \\(host .*, pid {os.getpid()}, started .*\\)'):
        lock_run_folder(str(tmp_path))
    first.close()
    lock_run_folder(str(tmp_path)).close()


def test_second_run_is_refused_while_a_live_one_holds_the_folder_and_a_killed_holder_releases_it(tiny_mds, tmp_path):
    folder = folder_of(tmp_path)
    os.makedirs(folder)
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import sys, time\nfrom prefix_composer.runtime.run_folder import lock_run_folder\n'
         'lock = lock_run_folder(sys.argv[1])\nprint("locked", flush=True)\ntime.sleep(600)', str(folder)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == 'locked\n'
        done = train_start(tiny_mds, tmp_path)
        assert done.returncode != 0
        assert f'{folder} is in use by another live run (host {os.uname().nodename}, pid {holder.pid}, started ' in done.stderr
        assert 'Stop that run, or give this one its own folder with run_name=<new name>.' in done.stderr
        assert not (folder / RECORD_NAME).exists()  # stopped before any other check
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock_run_folder(str(folder)).close()  # the OS released the killed holder's lock


# -- writable output folders ----------------------------------------------------------------
def test_writable_folder_is_created_and_left_clean(tmp_path):
    check_writable('save_folder', str(tmp_path / 'a' / 'b'))
    assert os.listdir(tmp_path / 'a' / 'b') == []


@pytest.mark.parametrize('key, override, blocker, folder', UNWRITABLE_FOLDERS)
def test_unwritable_output_folder_is_named_with_its_key_path_and_error(key, override, blocker, folder, tiny_mds, tmp_path):
    if blocker:  # a regular file: nothing can be created below it, not even by root
        os.makedirs(os.path.dirname(tmp_path / blocker), exist_ok=True)
        (tmp_path / blocker).write_text('')
    cfg = smoke(tiny_mds, tmp_path, override.format(tmp=tmp_path), 'callbacks.lm_eval.tasks=[charbench]')
    with pytest.raises(OSError) as failed:
        checked_save_folder(cfg)
    message = str(failed.value)
    assert message.startswith(f'{key}: cannot write to {folder.format(tmp=tmp_path)} (') and '[Errno ' in message
    assert f'Set {key} to a writable folder' in message


# -- stale Streaming shared memory ----------------------------------------------------------
STALE_DATASET = """import sys, time
from streaming import StreamingDataset
dataset = StreamingDataset(local=sys.argv[1], split='train', batch_size=1)
print(dataset._shm_prefix_int, flush=True)
time.sleep(600)
"""


def streaming_shm(prefix: int) -> set[str]:
    """The /dev/shm entries of Streaming's prefix ``prefix`` (names by Streaming's own ``_get_path``)."""
    return {name for name in (_get_path(prefix, shm) for shm in SHM_TO_CLEAN) if os.path.exists(os.path.join(SHM_DIR, name))}


def test_shared_memory_of_a_killed_dataset_is_removed_and_a_live_one_kept(tiny_mds):
    # Built first: a dataset built later maps the entries it finds while choosing its prefix.
    live = StreamingDataset(local=str(tiny_mds), split='val', batch_size=1)
    kept = streaming_shm(live._shm_prefix_int)
    assert kept
    # A new session, killed as a whole as a pod is: Python's resource tracker (a child process) dies
    # too, instead of unlinking what a lone killed process leaked.
    killed = subprocess.Popen([sys.executable, '-c', STALE_DATASET, str(tiny_mds)], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        killed_prefix = int(killed.stdout.readline())
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    stale = streaming_shm(killed_prefix)
    assert stale  # the kill left them
    removed = clean_stale_streaming_shm()
    assert stale <= set(removed) and not streaming_shm(killed_prefix)
    assert streaming_shm(live._shm_prefix_int) == kept and not kept & set(removed)


# Two datasets built at the same moment (each waits for "go" after its imports), with Streaming's
# window between choosing a prefix and creating it widened to make the race certain (each of its 5
# checks sleeps 0.4 s after finding).
RACING_DATASET = """import sys, time
import streaming.base.shared.prefix as prefix
from streaming import StreamingDataset
from prefix_composer.runtime.shared_memory import install_serialized_registration
find = prefix._check_and_find_retrying
def slow_find(*args, **kwargs):
    found = find(*args, **kwargs)
    time.sleep(0.4)
    return found
prefix._check_and_find_retrying = slow_find
if sys.argv[2] == 'serialized':
    install_serialized_registration()
print('ready', flush=True)
sys.stdin.readline()
dataset = StreamingDataset(local=sys.argv[1], split='train', batch_size=1)
print(dataset._shm_prefix_int, flush=True)
time.sleep(3)  # alive while the other registers
"""


@pytest.mark.parametrize('mode', ['as_streaming_has_it', 'serialized'])
def test_datasets_built_at_once_register_distinct_prefixes_under_the_lock(tiny_mds, mode):
    procs = [subprocess.Popen([sys.executable, '-c', RACING_DATASET, str(tiny_mds), mode], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        assert proc.stdout.readline() == 'ready\n', proc.stderr.read()
    for proc in procs:
        proc.stdin.write('go\n')
        proc.stdin.flush()
    outcomes = [proc.communicate(timeout=120) for proc in procs]
    failed = [err for proc, (_, err) in zip(procs, outcomes) if proc.returncode != 0]
    if mode == 'serialized':
        assert not failed, failed
        assert len({int(out) for out, _ in outcomes}) == 2
    else:  # the race the lock removes is real
        assert len(failed) == 1 and 'FileExistsError' in failed[0] and '_locals' in failed[0]
