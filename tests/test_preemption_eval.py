"""Preemption during an lm-eval run loses nothing (docs/preemption.md, guarantee 5).

A run of ``yamls/smoke_cpu.yaml`` (tiny model, 32-token sequences) evaluates ``local_hellaswag``
every 2 batches in 8 forward batches that ``tests/train_slow_lm_eval.py`` slows to 4 s each. SIGTERM
to the launcher during the evaluation of batch 2 must end the run with exit 0 after one forward batch
(not after the evaluation, past the grace period), with the checkpoint of batch 2 saved and the
evaluation marked as interrupted in it; the restart runs that evaluation first and finishes with
every row an uninterrupted run writes, the batch-2 scores being those of the batch-2 weights.
In-process: an evaluation stops at the next check (tokenising, or before a forward batch), model restored.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from lm_eval.models.huggingface import HFLM

from lm_eval_helpers import ROOT, load_script, tiny_model, write_local_tasks
from prefix_composer.evaluation.adapter import EvaluationInterrupted
from prefix_composer.evaluation.harness import evaluate_lm
from prefix_composer.evaluation.tasks import build_task_manager

SLOW_S = 4.0
LAUNCHER = (sys.executable, '-m', 'prefix_composer.runtime.launcher')
LM_EVAL = ['--tasks', 'local_hellaswag', '--limit', '2', '--batch-size', '1']
TIMEOUT_S = 1200  # the shared CI machine can be very slow; the test polls, it never sleeps fixed times


def command(launcher, script, tmp_path, mds, tasks_dir):
    return [*launcher, *script, 'yamls/smoke_cpu.yaml', f'variables.run_root={tmp_path}',
            f'variables.data.mds_dir={mds}', 'max_seq_len=32', 'global_train_batch_size=4',
            'device_train_microbatch_size=4', 'device_eval_batch_size=4', 'max_duration=4ba', 'save_interval=2ba',
            'eval_interval=4ba', 'eval_subset_num_batches=1', 'console_log_interval=1ba',
            'callbacks.lm_eval.tasks=[local_hellaswag]', 'callbacks.lm_eval.interval=2ba', 'callbacks.lm_eval.limit=2',
            'callbacks.lm_eval.batch_size=1', f'callbacks.lm_eval.include_path=[{tasks_dir}]']


def csv_rows(tmp_path) -> list[dict]:
    with open(tmp_path / 'smoke_cpu' / 'metrics.csv', newline='') as f:
        return list(csv.DictReader(f))


def test_sigterm_during_lm_eval_checkpoints_that_batch_and_the_restart_reruns_it(tmp_path, tiny_mds):
    tasks_dir = tmp_path / 'tasks'
    write_local_tasks(tasks_dir)
    log_path = tmp_path / 'interrupted.log'
    with open(log_path, 'w') as log_file:
        proc = subprocess.Popen(command(LAUNCHER, ('tests/train_slow_lm_eval.py', str(SLOW_S)), tmp_path, tiny_mds,
                                        tasks_dir), cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while 'slowed lm_eval forward batch' not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-5000:]
            assert time.monotonic() < deadline, 'the evaluation never started'
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)  # the launcher only, as Kubernetes signals PID 1
        assert proc.wait(timeout=TIMEOUT_S) == 0, log_path.read_text()[-5000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = log_path.read_text()
    # It stopped inside the evaluation: one of its 8 slowed forward batches ran, not the 8 (32 s) a
    # run that waits for the evaluation to end would take; counted, not timed (a loaded CI machine
    # stretches the checkpoint write, not the count).
    assert 'lm_eval at batch 2: preempted, stopped before forward batch 2 of 8;' in log
    assert log.count('slowed lm_eval forward batch') == 1
    assert 'Preempted: stopping at batch 2' in log
    checkpoint = tmp_path / 'smoke_cpu' / 'checkpoints' / 'ep0-ba2-rank0.pt'
    saved = torch.load(checkpoint, map_location='cpu', weights_only=False)['state']
    assert saved['callbacks']['LMEvalCallback']['interrupted_batch'] == 2
    assert [(r['batch'], r['phase']) for r in csv_rows(tmp_path)] == [('0', 'setup'), ('1', 'train'), ('2', 'train')]

    # the restart in one process without a launcher (start-up is most of this test's time)
    restart = subprocess.run(command((sys.executable,), ('train.py',), tmp_path, tiny_mds, tasks_dir), cwd=ROOT,
                             capture_output=True, text=True, timeout=TIMEOUT_S)
    assert restart.returncode == 0, restart.stdout[-3000:] + restart.stderr[-3000:]
    assert 'running the evaluation of batch 2 again' in restart.stdout + restart.stderr
    rows = csv_rows(tmp_path)
    assert sorted((int(r['batch']), r['phase']) for r in rows) == [
        (0, 'setup'), (1, 'train'), (2, 'lm_eval'), (2, 'train'), (3, 'train'), (4, 'eval'), (4, 'lm_eval'), (4, 'train')]
    logged = {k: float(v) for r in rows if (r['batch'], r['phase']) == ('2', 'lm_eval')
              for k, v in r.items() if k.startswith('metrics/lm_eval/') and v}
    rescored = load_script('eval_checkpoint').main([str(checkpoint), *LM_EVAL, '--include-path', str(tasks_dir),
                                                    '--out', str(tmp_path / 'rescored.csv')])
    assert len(logged) == 4 and logged == {f'metrics/lm_eval/{k}': v for k, v in rescored.items()}


def count_forwards(monkeypatch) -> list:
    """One entry per forward batch (``HFLM._loglikelihood_tokens`` call) from now on."""
    forwards, score = [], HFLM._loglikelihood_tokens
    monkeypatch.setattr(HFLM, '_loglikelihood_tokens', lambda self, *a, **k: forwards.append(1) or score(self, *a, **k))
    return forwards


def test_evaluation_stops_before_the_next_forward_batch_and_restores_the_model(tokenizer, tmp_path, monkeypatch):
    write_local_tasks(tmp_path)
    hf = tiny_model(tokenizer).model.train()
    forwards, asked = count_forwards(monkeypatch), []
    rng = torch.get_rng_state()
    with pytest.raises(EvaluationInterrupted, match='^stopped before forward batch 3 of 8$'):
        evaluate_lm(hf, tokenizer, ['local_hellaswag'], build_task_manager(['local_hellaswag'], [str(tmp_path)]),
                    batch_size=1, limit=2, should_stop=lambda: asked.append(1) or len(asked) == 3)
    assert (len(asked), len(forwards)) == (3, 2)
    assert all(m.training for m in hf.modules()) and torch.equal(torch.get_rng_state(), rng)



def test_a_long_tokenisation_is_stopped_too(tokenizer, monkeypatch):
    """1,200 requests (charbench_count_single: 300 items x 4 answers): asked after 1,024 of them."""
    hf = tiny_model(tokenizer).model
    forwards = count_forwards(monkeypatch)
    with pytest.raises(EvaluationInterrupted, match='^stopped while tokenising, after 1024 requests$'):
        evaluate_lm(hf, tokenizer, ['charbench_count_single'], build_task_manager(['charbench_count_single'], []),
                    batch_size=16, should_stop=lambda: True)
    assert forwards == []
