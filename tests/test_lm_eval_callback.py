"""lm-eval during training: adapter scores, sharding over ranks, RNG/mode hygiene, start-up check, train.py rows."""

from __future__ import annotations

import csv
import json
import math
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from composer.core import Callback, Precision
from lm_eval.tasks._yaml_loader import load_yaml
from llmfoundry.utils.builders import build_callback

from lm_eval_helpers import (LM_EVAL_TASKS, ROOT, WINOGRANDE_ITEMS, continuation_logprob, hellaswag_items, load_script,
                             tiny_model, train_tiny, write_local_tasks)
from prefix_composer.evaluation.adapter import forward_chunks
from prefix_composer.evaluation.callback import LMEvalCallback
from prefix_composer.evaluation.charbench.generate import DATA_DIR as CHARBENCH_DATA
from prefix_composer.evaluation.harness import AUTOCAST_DTYPES, METRIC_PREFIX, evaluate_lm, flatten_metrics
from prefix_composer.evaluation.tasks import TASKS_DIR, build_task_manager

LOCAL_AND_CHARBENCH = ['local_hellaswag', 'local_winogrande', 'charbench_count_single']


@pytest.fixture(scope='module')
def local_tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp('lm_eval_tasks')
    write_local_tasks(folder)
    return str(folder)


def test_forward_chunks_keep_shared_contexts_together_longest_first():
    def request(context, continuation):
        return ('', ''), context, continuation

    requests = [request([1, 2], [3]), request([1, 2], [4]), request([5], [6]), request([7, 8, 9], [1]),
                request([7, 8, 9], [2, 3])]
    # groups by context + continuation[:-1]: {0, 1} (1 2), {2} (5), {3} (7 8 9), {4} (7 8 9 2); longest first
    assert forward_chunks(requests, batch_size=2) == [[4, 3], [0, 1, 2]]
    assert forward_chunks(requests, batch_size=1) == [[4], [3], [0, 1], [2]]
    assert forward_chunks([], batch_size=3) == []


def test_flatten_metrics_strips_none_filter_and_drops_strings():
    results = {
        'results': {'t': {'alias': 't', 'acc,none': 0.5, 'acc_stderr,none': 'N/A', 'exact_match,strict-match': 1}},
        'groups': {'g': {'alias': 'g', 'acc,none': 0.25, 'acc_stderr,none': 0.1}},
    }
    assert flatten_metrics(results) == {'t/acc': 0.5, 't/exact_match/strict-match': 1.0, 'g/acc': 0.25, 'g/acc_stderr': 0.1}


def test_winogrande_debiased_is_lm_evals_winogrande_on_the_debiased_config():
    ours = load_yaml(TASKS_DIR / 'winogrande_debiased.yaml')
    theirs = load_yaml(LM_EVAL_TASKS / 'winogrande' / 'default.yaml')
    assert (ours.pop('task'), ours.pop('dataset_name')) == ('winogrande_debiased', 'winogrande_debiased')
    assert (theirs.pop('task'), theirs.pop('dataset_name')) == ('winogrande', 'winogrande_xl')
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        if callable(value):  # the same preprocessing functions, imported by module path
            assert ours[key].__module__.endswith('winogrande.preprocess_winogrande') and ours[key].__name__ == value.__name__
            doc = {'sentence': 'The cup is on the _ today.', 'option1': 'table', 'option2': 'floor', 'answer': '2'}
            assert ours[key](doc) == value(doc)
        else:
            assert ours[key] == value, key


def test_evaluate_lm_scores_like_direct_loglikelihoods_and_leaves_state_untouched(tokenizer, local_tasks):
    hf = tiny_model(tokenizer).model.train()
    hf.model.layers[0].eval()  # a submodule deliberately in eval mode must stay so
    modes = [m.training for m in hf.modules()]
    rng = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    manager = build_task_manager(LOCAL_AND_CHARBENCH, [local_tasks])

    result = evaluate_lm(hf, tokenizer, LOCAL_AND_CHARBENCH, manager, batch_size=3, limit=4)
    metrics = result.metrics

    assert random.getstate() == rng[0]
    assert np.array_equal(np.random.get_state()[1], rng[1]) and torch.equal(torch.get_rng_state(), rng[2])
    assert [m.training for m in hf.modules()] == modes
    assert tokenizer.pad_token is None  # HFLM set a pad token on its own copy only
    assert {p.dtype for p in hf.parameters()} == {torch.float32} and {p.device.type for p in hf.parameters()} == {'cpu'}

    hf.eval()
    correct, correct_norm = 0, 0
    for item in hellaswag_items()[:4]:  # lm-eval's hellaswag: query "<activity>: <ctx_a> <Ctx_b>", choice " <ending>"
        query = f"{item['activity_label']}: {item['ctx_a']} {item['ctx_b'].capitalize()}"
        scores = [continuation_logprob(hf, tokenizer, query, ' ' + ending) for ending in item['endings']]
        correct += int(np.argmax(scores)) == int(item['label'])
        correct_norm += int(np.argmax([s / len(e) for s, e in zip(scores, item['endings'])])) == int(item['label'])
    assert metrics['local_hellaswag/acc'] == correct / 4
    assert metrics['local_hellaswag/acc_norm'] == correct_norm / 4
    assert metrics['local_hellaswag/acc_stderr'] == pytest.approx(math.sqrt(correct / 4 * (1 - correct / 4) / 3))

    # every scored choice of every task, recomputed request by request (float64 log-softmax, no batching)
    items = {(item['task'], item['doc_id']): item for item in result.items}
    references = {'local_hellaswag': [
        (f"{it['activity_label']}: {it['ctx_a']} {it['ctx_b'].capitalize()}", [' ' + e for e in it['endings']], int(it['label']))
        for it in hellaswag_items()[:4]]}
    # winogrande partial scoring: one context per option (sentence up to "_" + option), the same continuation
    references['local_winogrande'] = [
        ([s[:s.index('_')] + a, s[:s.index('_')] + b], [' ' + s[s.index('_') + 1:].strip()] * 2, int(y) - 1)
        for s, a, b, y in WINOGRANDE_ITEMS[:4]]
    # CharBench: query then each choice with no delimiter (every choice starts with its own space)
    references['charbench_count_single'] = [
        (item['query'], item['choices'], item['gold'])
        for item in map(json.loads, (CHARBENCH_DATA / 'count_single.jsonl').read_text().splitlines()[:4])]
    for task, docs in references.items():
        correct = correct_norm = 0
        for doc_id, (contexts, choices, gold) in enumerate(docs):
            contexts = contexts if isinstance(contexts, list) else [contexts] * len(choices)
            scores = [continuation_logprob(hf, tokenizer, c, x) for c, x in zip(contexts, choices)]
            assert items[(task, doc_id)]['gold'] == gold
            assert items[(task, doc_id)]['loglikelihoods'] == pytest.approx(scores, rel=1e-5), (task, doc_id)
            correct += int(np.argmax(scores)) == gold
            correct_norm += int(np.argmax([v / len(x) for v, x in zip(scores, choices)])) == gold
        assert metrics[f'{task}/acc'] == correct / 4, task
        if task != 'local_winogrande':
            assert metrics[f'{task}/acc_norm'] == correct_norm / 4, task
    assert set(metrics) == {f'{t}/{m}' for t in LOCAL_AND_CHARBENCH for m in ('acc', 'acc_stderr', 'acc_norm', 'acc_norm_stderr')
                            if not (t == 'local_winogrande' and m.startswith('acc_norm'))}


def test_two_gloo_ranks_give_the_single_rank_results_with_half_the_forwards(local_tasks, tmp_path):
    out = tmp_path / 'bench.json'
    bench = load_script('bench_lm_eval')
    assert bench.main(['--ranks', '2', '--tasks', ','.join(LOCAL_AND_CHARBENCH), '--limit', '6', '--batch-size', '2',
                       '--repeats', '1', '--calibration-steps', '2', '--include-path', local_tasks, '--json', str(out)]) == 0
    report = json.loads(out.read_text())
    assert report['metrics_identical'] and report['n_metrics'] == 10
    # exact equality of every request's float log-likelihood: hellaswag 6 x 4 endings, winogrande 6 x 2, count 6 x 4
    assert report['loglikelihoods_identical'] and report['n_loglikelihoods'] == 6 * 4 + 6 * 2 + 6 * 4
    # forward rows (context groups): hellaswag 4 contexts x 4 multi-token endings (docs 4, 5 repeat the
    # (context, ending) pairs of docs 0, 1 in another order), winogrande 6 docs x 2 partial contexts,
    # count 6 docs x 1 shared context; batches of 2 groups
    assert report['one_rank_forward_calls'] == (16 + 12 + 6) // 2
    assert report['n_ranks_forward_calls'] == [9, 9]  # 17 batches: 9 + 8, the short rank re-runs one


class ModeProbe(Callback):
    """Records, after the callbacks before it, whether every module is in train mode at BATCH_END."""

    def __init__(self):
        self.seen = []

    def batch_end(self, state, logger):
        self.seen.append((int(state.timestamp.batch), all(m.training for m in state.model.modules())))


class Reseed(Callback):
    def batch_end(self, state, logger):
        if int(state.timestamp.batch) == 2:
            torch.manual_seed(1234)


def test_training_after_an_evaluation_is_identical_to_training_without(tokenizer, local_tasks, tmp_path):
    # attention dropout makes training consume the torch RNG, so a reseed would change the weights
    baseline, _ = train_tiny(tokenizer, '4ba', attention_dropout=0.1)
    reseeded, _ = train_tiny(tokenizer, '4ba', callbacks=[Reseed()], attention_dropout=0.1)
    assert not all(torch.equal(p, q) for p, q in zip(baseline.parameters(), reseeded.parameters()))

    probe = ModeProbe()
    callback = LMEvalCallback(tasks=LOCAL_AND_CHARBENCH, interval='2ba', limit=2, batch_size=4, include_path=[local_tasks],
                              records_dir=str(tmp_path))
    evaluated, memory = train_tiny(tokenizer, '4ba', callbacks=[callback, probe], attention_dropout=0.1)

    assert all(torch.equal(p, q) for p, q in zip(baseline.parameters(), evaluated.parameters()))
    assert probe.seen == [(1, True), (2, True), (3, True), (4, True)]
    logged = memory.data['metrics/lm_eval/local_hellaswag/acc']
    assert [int(timestamp.batch) for timestamp, _ in logged] == [2, 4]  # at the interval; not again at FIT_END
    assert all(value in (0.0, 0.5, 1.0) for _, value in logged)


def test_startup_check_fails_fast_naming_the_task_and_the_fix(local_tasks, tmp_path):
    with pytest.raises(ValueError, match=r"lm_eval task 'no_such_task' is unknown .*callbacks\.lm_eval\.tasks"):
        build_callback('lm_eval', {'tasks': ['charbench_count_single', 'no_such_task']})

    hub = tmp_path / 'hub_tasks'
    hub.mkdir()
    (hub / 'hub_task.yaml').write_text(
        f'include: {LM_EVAL_TASKS / "piqa" / "piqa.yaml"}\ntask: hub_task\n'
        'dataset_path: prefix-composer-tests/not-in-any-cache\n',
    )
    with pytest.raises(ValueError, match=r"lm_eval task 'hub_task': its dataset could not be loaded .*HF_DATASETS_CACHE.*"
                                         r"python -m prefix_composer\.evaluation\.tasks hub_task"):
        build_callback('lm_eval', {'tasks': ['hub_task'], 'include_path': [str(hub)]})

    with pytest.raises(ValueError, match=r"requested twice \(in 'charbench' and 'charbench_single'\)"):
        LMEvalCallback(tasks=['charbench', 'charbench_single'])
    with pytest.raises(ValueError, match='bootstrap_iters must be >= 1'):
        LMEvalCallback(tasks=['charbench_count_single'], bootstrap_iters=0)


def test_train_py_run_logs_lm_eval_rows_and_keeps_training(tiny_mds, local_tasks, tmp_path):
    tasks = ['local_hellaswag', 'charbench_count_single']
    overrides = [
        f'variables.run_root={tmp_path}', f'variables.data.mds_dir={tiny_mds}', 'max_seq_len=32',
        'global_train_batch_size=4', 'device_train_microbatch_size=4', 'device_eval_batch_size=4',
        'max_duration=4ba', 'eval_interval=100ba', 'eval_subset_num_batches=1', 'console_log_interval=1ba',
        'save_interval=100ba', f'callbacks.lm_eval.tasks=[{",".join(tasks)}]', 'callbacks.lm_eval.interval=2ba',
        'callbacks.lm_eval.limit=2', 'callbacks.lm_eval.batch_size=4', f'callbacks.lm_eval.include_path=[{local_tasks}]',
    ]
    done = subprocess.run([sys.executable, 'train.py', 'yamls/smoke_cpu.yaml', *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(tmp_path / 'smoke_cpu' / 'metrics.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    lm_rows = [r for r in rows if r['phase'] == 'lm_eval']
    assert [int(r['batch']) for r in lm_rows] == [2, 4]
    # the last row is what evaluate_lm gives on the final weights (the checkpoint saved at the end of training)
    rescored = load_script('eval_checkpoint').main([
        str(tmp_path / 'smoke_cpu'), '--tasks', ','.join(tasks), '--limit', '2', '--batch-size', '4',
        '--include-path', local_tasks, '--hf-dir', str(tmp_path / 'hf'), '--records-dir', str(tmp_path / 'records')])
    assert len(rescored) == 8
    assert {f'{METRIC_PREFIX}/{name}': value for name, value in rescored.items()} == {
        key: float(value) for key, value in lm_rows[-1].items() if key.startswith(METRIC_PREFIX)}
    # training went on after the evaluations: a training loss for every batch
    assert [int(r['batch']) for r in rows if r['phase'] == 'train' and r['loss/train/total']] == [1, 2, 3, 4]


@pytest.mark.parametrize('precision, logits_dtype', [('amp_bf16', torch.bfloat16), ('fp32', torch.float32)])
def test_the_trainers_precision_is_the_autocast_of_the_evaluation_forward(tokenizer, local_tasks, precision, logits_dtype):
    """The callback passes ``AUTOCAST_DTYPES[state.precision]``; amp_bf16 -> the forward runs under CPU
    autocast to bfloat16 (fp32 weights, bf16 logits), fp32 -> no autocast."""
    hf = tiny_model(tokenizer).model
    seen = []
    hf.register_forward_hook(lambda module, args, out: seen.append(
        (torch.is_autocast_enabled('cpu'), torch.get_autocast_dtype('cpu'), out.logits.dtype)))
    dtype = AUTOCAST_DTYPES[Precision(precision)]
    result = evaluate_lm(hf, tokenizer, ['local_winogrande'], build_task_manager(['local_winogrande'], [local_tasks]),
                         batch_size=4, limit=2, mixed_precision_dtype=dtype)
    assert len(seen) > 0 and set(seen) == {(dtype is not None, torch.bfloat16, logits_dtype)}
    assert result.evaluation['settings']['autocast'] == (None if dtype is None else 'bfloat16')
    assert {p.dtype for p in hf.parameters()} == {torch.float32}
