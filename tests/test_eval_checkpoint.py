"""scripts/eval_checkpoint.py: a Composer checkpoint exported to a Hugging Face folder and re-scored
with exactly the metrics the callback logged for the same weights."""

from __future__ import annotations

import csv

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lm_eval_helpers import TRAINING_TEXT, load_script, train_tiny, write_local_tasks
from prefix_composer.evaluation.callback import LMEvalCallback
from prefix_composer.evaluation.harness import METRIC_PREFIX

TASKS = ['local_hellaswag', 'charbench_count_single']


def test_rescoring_a_checkpoint_reproduces_the_callbacks_metrics(tokenizer, tmp_path):
    tasks_dir, run, hf_dir = tmp_path / 'tasks', tmp_path / 'run', tmp_path / 'hf'
    write_local_tasks(tasks_dir)
    callback = LMEvalCallback(tasks=TASKS, interval='2ba', limit=3, batch_size=4, include_path=[str(tasks_dir)])
    model, memory = train_tiny(tokenizer, '2ba', callbacks=[callback], save_folder=str(run / 'checkpoints'),
                               save_interval='2ba')
    logged = {key[len(METRIC_PREFIX) + 1:]: values[-1][1] for key, values in memory.data.items()
              if key.startswith(METRIC_PREFIX)}
    assert len(logged) == 8

    args = [str(run), '--tasks', ','.join(TASKS), '--limit', '3', '--batch-size', '4',
            '--include-path', str(tasks_dir), '--hf-dir', str(hf_dir)]
    script = load_script('eval_checkpoint')
    assert script.main(args) == logged
    script.main(args)  # scoring the same checkpoint again replaces its row

    with open(run / 'lm_eval_checkpoints.csv', newline='') as f:
        (row,) = list(csv.DictReader(f))
    assert row['checkpoint'] == str((run / 'checkpoints' / 'latest-rank0.pt').absolute())
    assert (row['batch'], row['tokens'], row['phase']) == ('2', str(2 * 4 * 32), 'lm_eval')
    assert {k: float(v) for k, v in row.items() if k.startswith(METRIC_PREFIX)} == {
        f'{METRIC_PREFIX}/{name}': value for name, value in logged.items()}

    # what `lm_eval --model hf --model_args pretrained=<hf_dir>` loads: the trained weights and the same ids
    exported = AutoModelForCausalLM.from_pretrained(hf_dir)
    trained = model.model.state_dict()
    assert all(torch.equal(tensor, trained[name]) for name, tensor in exported.state_dict().items())
    text = TRAINING_TEXT + '<|end_of_text|>'
    assert AutoTokenizer.from_pretrained(hf_dir)(text).input_ids == tokenizer(text).input_ids
