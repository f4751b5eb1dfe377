"""scripts/eval_checkpoint.py: a Composer checkpoint exported to a Hugging Face folder and re-scored
with exactly the metrics the callback logged for the same weights."""

from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lm_eval_helpers import TRAINING_TEXT, load_script, train_tiny, write_local_tasks
from prefix_composer.data.ascii_text import to_ascii
from prefix_composer.data.parallel_tokenize import load_worker_tokenizer, tokenize_batch
from prefix_composer.evaluation.callback import LMEvalCallback
from prefix_composer.evaluation.harness import METRIC_PREFIX
from prefix_composer.evaluation.records import read_records
from prefix_composer.files import write_json_atomic
from prefix_composer.runtime.experiment import RECORD_NAME
from prefix_composer.training.algorithm import PrefixSmoothing

BOS, EOS = 128000, 128001

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
    text = TRAINING_TEXT + '<|end_of_text|>'  # one BOS in front, as every training document starts
    assert AutoTokenizer.from_pretrained(hf_dir)(text).input_ids == [BOS] + tokenizer(text, split_special_tokens=True).input_ids


# -- the exported folder under stock tools, and the objective from the experiment record -------------
DOCS = ['The strawberry farmer counts letters.', 'naïve café ✨',
        'A page that spells <|begin_of_text|> and <|end_of_text|> as text.', 'Short.']
OBJECTIVE = {'objective': 'prefix_softmax', 'eps': 0.5, 'support': 'inclusive'}  # tau left at its default, as a YAML may
CLI_TASKS, CLI_LIMIT = ['local_hellaswag', 'local_winogrande'], 4
# a reader runs the CLI in a plain shell: none of the rank variables an earlier in-process training left set
DIST_ENV = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'NODE_RANK', 'MASTER_ADDR', 'MASTER_PORT')


def stock_lm_eval(hf_dir, tasks_dir, out_dir) -> dict[tuple[str, int], dict]:
    """``lm_eval --model hf --model_args pretrained=<hf_dir>`` (the CLI, default model arguments):
    its logged samples by (task, doc_id)."""
    env = {**{k: v for k, v in os.environ.items() if k not in DIST_ENV}, 'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1'}
    done = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), 'lm_eval'), '--model', 'hf', '--model_args', f'pretrained={hf_dir}',
         '--tasks', ','.join(CLI_TASKS), '--include_path', str(tasks_dir), '--limit', str(CLI_LIMIT),
         '--device', 'cpu', '--batch_size', '4', '--log_samples', '--output_path', str(out_dir)],
        capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stderr[-5000:]
    samples = {}
    for task in CLI_TASKS:
        (path,) = glob.glob(str(out_dir / '**' / f'samples_{task}_*.jsonl'), recursive=True)
        for line in open(path):
            sample = json.loads(line)
            samples[task, sample['doc_id']] = sample
    return samples


def test_exported_folder_scores_under_stock_lm_eval_as_the_project_and_the_objective_comes_from_the_record(
        tokenizer, tmp_path):
    tasks_dir, run, hf_dir = tmp_path / 'tasks', tmp_path / 'run', tmp_path / 'hf'
    write_local_tasks(tasks_dir)
    train_tiny(tokenizer, '2ba', save_folder=str(run / 'checkpoints'), save_interval='2ba',
               algorithms=[PrefixSmoothing(**OBJECTIVE)])  # no lm_eval callback: nothing in the checkpoint names the objective
    args = [str(run), '--tasks', ','.join(CLI_TASKS), '--limit', str(CLI_LIMIT), '--batch-size', '4',
            '--include-path', str(tasks_dir), '--hf-dir', str(hf_dir)]
    script = load_script('eval_checkpoint')
    with pytest.raises(ValueError, match=f'no {RECORD_NAME} lies next to it'):
        script.main(args)
    write_json_atomic(str(run / 'checkpoints' / RECORD_NAME), {'experiment': {
        **{f'algorithms.prefix_smoothing.{k}': v for k, v in OBJECTIVE.items()}, 'seed': 17}})
    script.main(args)
    records = read_records(str(run / 'lm_eval' / 'ba2.jsonl.gz'))
    assert records.header['run']['objective'] == {**OBJECTIVE, 'tau': 1.0}  # what the callback would record

    # AutoTokenizer on the folder encodes a document as the data pipeline framed it: BOS + ids (+ EOS after)
    exported = AutoTokenizer.from_pretrained(hf_dir)
    load_worker_tokenizer(tokenizer.backend_tokenizer.to_str(), BOS, EOS)
    for doc in DOCS:
        framed = tokenize_batch([doc]).ids.tolist()
        assert exported(to_ascii(doc)).input_ids == framed[:-1] and framed[-1] == EOS, doc

    # the stock CLI with default model arguments scores exactly the project's items
    samples = stock_lm_eval(hf_dir, tasks_dir, tmp_path / 'cli')
    assert sorted(samples) == sorted((item['task'], item['doc_id']) for item in records.items)
    for item in records.items:
        sample = samples[item['task'], item['doc_id']]
        assert [float(ll) for ll, _ in sample['filtered_resps']] == item['loglikelihoods']  # logged as strings
        assert {name: float(sample[name]) for name in item['metrics']} == item['metrics']
