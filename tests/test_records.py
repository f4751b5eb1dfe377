"""Per-item lm-eval records: what they hold (checked against the item files and an independent
log-likelihood), the file format and its atomic write, replacement after an autoresume, the same
bytes from 1 and 2 gloo ranks, and ``scripts/eval_checkpoint.py`` reproducing the callback's file."""

from __future__ import annotations

import gzip
import json
import argparse
import os

import numpy as np
import pytest
import torch
import torch.distributed
from lm_eval.evaluator import simple_evaluate

from lm_eval_helpers import WINOGRANDE_ITEMS, continuation_logprob, hellaswag_items, load_script, tiny_model, train_tiny, write_local_tasks
from prefix_composer.tokenizer import tokenizer_content_hash
from prefix_composer.evaluation.adapter import ShardedHFLM
from prefix_composer.evaluation.callback import LMEvalCallback
from prefix_composer.evaluation.charbench.tasks.utils import DATA_DIR, read_jsonl
from prefix_composer.evaluation.harness import evaluate_lm, flatten_metrics
from prefix_composer.evaluation.records import (
    Records,
    encode_records,
    read_header,
    read_records,
    records_by_batch,
    run_identity,
    settings_differences,
    write_records,
)
from prefix_composer.evaluation.tasks import build_task_manager
from prefix_composer.tokenizer import PackagedLlama3Tokenizer

TASKS = ['local_hellaswag', 'local_winogrande', 'charbench_count_single']
RUN = run_identity('r', 17, {'model_type': 'llama', 'hidden_size': 32, 'attention_dropout': 0.0}, None)


@pytest.fixture(scope='module')
def local_tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp('lm_eval_tasks')
    write_local_tasks(folder)
    return str(folder)


def test_records_hold_every_documents_gold_scores_and_metrics(tokenizer, local_tasks):
    hf = tiny_model(tokenizer).model.eval()
    manager = build_task_manager(TASKS, [local_tasks])
    result = evaluate_lm(hf, tokenizer, TASKS, manager, batch_size=3, limit=4)

    # log_samples=True changes no metric: lm-eval by task names, without samples, gives the same dict
    plain = simple_evaluate(model=ShardedHFLM(hf, tokenizer, batch_size=3), tasks=TASKS, limit=4, task_manager=manager,
                            log_samples=False, random_seed=None, numpy_random_seed=None, torch_random_seed=None)
    assert result.metrics == flatten_metrics(plain)

    items = {(r['task'], r['doc_id']): r for r in result.items}
    assert sorted(items) == [(t, i) for t in sorted(TASKS) for i in range(4)]
    count_items = read_jsonl(DATA_DIR / 'count_single.jsonl')
    golds = {'local_hellaswag': [int(d['label']) for d in hellaswag_items()],
             'local_winogrande': [int(answer) - 1 for *_, answer in WINOGRANDE_ITEMS],
             'charbench_count_single': [d['gold'] for d in count_items]}
    for (task, doc_id), record in items.items():
        assert record['gold'] == golds[task][doc_id], (task, doc_id)
        lls = np.array(record['loglikelihoods'])
        assert record['metrics']['acc'] == float(np.argmax(lls) == record['gold'])
    for doc_id, item in enumerate(hellaswag_items()[:4]):  # an independent float64 log-likelihood per choice
        query = f"{item['activity_label']}: {item['ctx_a']} {item['ctx_b'].capitalize()}"
        expected = [continuation_logprob(hf, tokenizer, query, ' ' + ending) for ending in item['endings']]
        record = items['local_hellaswag', doc_id]
        assert record['loglikelihoods'] == pytest.approx(expected, rel=1e-5)
        normed = np.array(record['loglikelihoods']) / [len(' ' + e) for e in item['endings']]
        assert record['metrics']['acc_norm'] == float(np.argmax(normed) == record['gold'])
    for doc_id, item in enumerate(count_items[:4]):
        expected = [continuation_logprob(hf, tokenizer, item['query'], choice) for choice in item['choices']]
        assert items['charbench_count_single', doc_id]['loglikelihoods'] == pytest.approx(expected, rel=1e-5)
    for task in TASKS:  # the task's metric is the mean of its items' values
        for metric in ('acc', 'acc_norm') if task != 'local_winogrande' else ('acc',):
            values = [r['metrics'][metric] for (t, _), r in items.items() if t == task]
            assert result.metrics[f'{task}/{metric}'] == pytest.approx(sum(values) / 4)
    assert set(items['local_winogrande', 0]['metrics']) == {'acc'}

    settings = result.evaluation['settings']
    assert {k: settings[k] for k in ('tasks', 'limit', 'num_fewshot', 'fewshot_random_seed', 'autocast')} == {
        'tasks': TASKS, 'limit': 4, 'num_fewshot': None, 'fewshot_random_seed': 1234, 'autocast': None}
    assert settings['tokenizer_hash'] == tokenizer_content_hash(tokenizer)
    assert {t: v['n'] for t, v in settings['items'].items()} == {t: 4 for t in TASKS}
    assert set(settings['task_versions']) == set(TASKS) and settings['n_shot'] == {t: 0 for t in TASKS}
    assert result.evaluation['higher_is_better']['local_hellaswag'] == {'acc': True, 'acc_norm': True}


def records(items: list[dict], **settings) -> Records:
    header = {'format': 'prefix_composer.lm_eval_records', 'version': 1, 'batch': 4, 'tokens': 512, 'run': RUN,
              'groups': {}, 'higher_is_better': {}, 'info': {},
              'settings': {'tasks': ['t'], 'limit': None, 'num_fewshot': 0, 'fewshot_random_seed': 1234,
                           'autocast': None, 'tokenizer_hash': 'abc', 'task_versions': {'t': 1},
                           'n_shot': {'t': 0}, 'items': {'t': {'n': len(items), 'hash': 'h'}}, **settings}}
    return Records(header=header, items=items)


ITEMS = [{'task': 't', 'doc_id': i, 'gold': i % 2, 'loglikelihoods': [-1.5 - i, -2.25], 'metrics': {'acc': float(i % 2 == 0)}}
         for i in range(3)]


def test_records_file_format_round_trips_byte_stably(tmp_path):
    path = tmp_path / 'lm_eval' / 'ba4.jsonl.gz'
    write_records(str(path), records(ITEMS))
    assert read_records(str(path)) == records(ITEMS) and read_header(str(path)) == records(ITEMS).header
    data = path.read_bytes()
    assert data == encode_records(records(ITEMS))
    assert data[4:8] == b'\0\0\0\0'  # gzip mtime 0: equal content, equal bytes
    lines = gzip.decompress(data).decode().splitlines()
    assert len(lines) == 4 and json.loads(lines[1]) == ITEMS[0]
    (tmp_path / 'lm_eval' / 'ba12.jsonl.gz').write_bytes(data)
    (tmp_path / 'lm_eval' / 'notes.txt').write_text('not a records file')
    assert records_by_batch(str(tmp_path / 'lm_eval')) == {4: str(path), 12: str(tmp_path / 'lm_eval' / 'ba12.jsonl.gz')}

    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r'ba4\.jsonl\.gz is damaged .*eval_checkpoint\.py'):
        read_records(str(path))
    bad = records(ITEMS)
    del bad.header['settings']['limit'], bad.header['groups']
    with pytest.raises(ValueError, match=r"lacks \['groups', 'settings\.limit'\]"):
        write_records(str(path), bad)
    assert settings_differences(records(ITEMS, limit=20).header['settings'], records(ITEMS).header['settings']) == [
        'settings.limit: 20 vs null']
    assert settings_differences({'items': {'t': {'n': 3}}}, {'items': {'t': {'n': 4}, 'u': {'n': 1}}}) == [
        'settings.items.t.n: 3 vs 4', 'settings.items.u: "<absent>" vs {"n": 1}']


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = tmp_path / 'ba4.jsonl.gz'
    write_records(str(path), records(ITEMS))
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, 'fsync', lambda fd: (synced.append(os.readlink(f'/proc/self/fd/{fd}')), real_fsync(fd)))
    write_records(str(path), records(ITEMS[:2]))
    assert synced == [f'{path}.tmp', str(tmp_path)]  # the data, then the folder after the rename
    assert read_records(str(path)).items == ITEMS[:2]

    write_records(str(path), records(ITEMS))
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError('disk pulled')
    monkeypatch.setattr(os, 'replace', crash)
    with pytest.raises(OSError, match='disk pulled'):
        write_records(str(path), records(ITEMS[:1]))
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ['ba4.jsonl.gz']


def test_records_past_the_resumed_checkpoint_are_replaced_not_duplicated(tokenizer, local_tasks, tmp_path):
    run, tasks = tmp_path / 'run', ['local_winogrande']
    folder = run / 'lm_eval'

    def train(interval: str, **kwargs):
        callback = LMEvalCallback(tasks=tasks, interval=interval, limit=2, batch_size=4, include_path=[local_tasks])
        train_tiny(tokenizer, '4ba', callbacks=[callback], save_folder=str(run / 'checkpoints'), save_interval='2ba',
                   run_name='r', **kwargs)

    train('1ba')
    assert sorted(records_by_batch(str(folder))) == [1, 2, 3, 4]
    straight = {b: (folder / f'ba{b}.jsonl.gz').read_bytes() for b in (1, 2, 4)}
    header = read_header(str(folder / 'ba4.jsonl.gz'))
    assert (header['batch'], header['tokens']) == (4, 4 * 4 * 32)
    assert header['run'] == {'run_name': 'r', 'seed': 17, 'objective': None, 'model': {
        'model_type': 'llama', 'vocab_size': 128256, 'hidden_size': 32, 'intermediate_size': 64, 'num_hidden_layers': 2,
        'num_attention_heads': 4, 'num_key_value_heads': 2, 'head_dim': 8, 'max_position_embeddings': 64,
        'rope_theta': 10000.0, 'rope_scaling': None, 'rms_norm_eps': 1e-06, 'tie_word_embeddings': True,
        'hidden_act': 'silu', 'attention_bias': False, 'mlp_bias': False}}

    # Preempted after the evaluations of batches 3 and 4 but before the checkpoint of batch 4.
    checkpoints = run / 'checkpoints'
    os.remove(checkpoints / 'ep0-ba4-rank0.pt')
    os.remove(checkpoints / 'latest-rank0.pt')
    os.symlink('ep0-ba2-rank0.pt', checkpoints / 'latest-rank0.pt')
    (folder / 'ba4.jsonl.gz').write_bytes(b'written by the preempted run')

    train('2ba', autoresume=True)  # resumes at batch 2; now evaluates every 2 batches
    assert sorted(records_by_batch(str(folder))) == [1, 2, 4]  # ba3 is gone: no evaluation at 3 any more
    assert {b: (folder / f'ba{b}.jsonl.gz').read_bytes() for b in (1, 2, 4)} == straight


def rank_records_worker(rank: int, world_size: int, port: int, args) -> dict:
    """One gloo rank of ``bench_lm_eval``'s process launcher: evaluate, rank 0 writes the records."""
    bench = load_script('bench_lm_eval')
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.distributed.init_process_group('gloo', rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        manager = build_task_manager(TASKS, [args.tasks_dir])
        result = evaluate_lm(bench.tiny_llama(64, seed=0), PackagedLlama3Tokenizer(), TASKS, manager,
                             batch_size=2, limit=6)
        path = os.path.join(args.out, f'{world_size}ranks.jsonl.gz')
        if rank == 0:
            write_records(path, result.records(RUN, batch=4, tokens=512))
        return {'has_items': result.items is not None}
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_write_the_single_rank_records_byte_for_byte(local_tasks, tmp_path):
    bench = load_script('bench_lm_eval')
    args = argparse.Namespace(tasks_dir=local_tasks, out=str(tmp_path))
    assert bench.run_processes(rank_records_worker, 1, args) == [{'has_items': True}]
    assert bench.run_processes(rank_records_worker, 2, args) == [{'has_items': True}, {'has_items': False}]
    one, two = (tmp_path / '1ranks.jsonl.gz').read_bytes(), (tmp_path / '2ranks.jsonl.gz').read_bytes()
    assert one == two
    assert len(read_records(str(tmp_path / '1ranks.jsonl.gz')).items) == 3 * 6


def test_eval_checkpoint_rewrites_the_callbacks_records_identically(tokenizer, local_tasks, tmp_path):
    run, tasks = tmp_path / 'run', ['local_hellaswag', 'charbench_count_single']
    callback = LMEvalCallback(tasks=tasks, interval='2ba', limit=3, batch_size=4, include_path=[local_tasks])
    train_tiny(tokenizer, '2ba', callbacks=[callback], save_folder=str(run / 'checkpoints'), save_interval='2ba')
    path = run / 'lm_eval' / 'ba2.jsonl.gz'
    by_callback = path.read_bytes()

    script = load_script('eval_checkpoint')
    args = [str(run), '--tasks', ','.join(tasks), '--batch-size', '4', '--include-path', local_tasks]
    os.remove(path)
    script.main([*args, '--limit', '3'])
    assert path.read_bytes() == by_callback

    with pytest.raises(ValueError, match=r'ba2\.jsonl\.gz holds records of this checkpoint evaluated differently '
                                         r'\(settings\.limit: 3 vs 2\); it is not replaced\. Pass --records-dir'):
        script.main([*args, '--limit', '2'])
    assert path.read_bytes() == by_callback
    script.main([*args, '--limit', '2', '--records-dir', str(tmp_path / 'elsewhere')])
    assert read_header(str(tmp_path / 'elsewhere' / 'ba2.jsonl.gz'))['settings']['limit'] == 2


def test_eval_checkpoint_needs_the_objective_of_a_smoothed_run_without_the_callback():
    script = load_script('eval_checkpoint')
    checkpoint = {'state': {'callbacks': {}, 'algorithms': [('PrefixSmoothing', {'repr': '...'})]}}
    with pytest.raises(ValueError, match=r"without callbacks\.lm_eval, and no experiment\.json lies next to it.* --objective '"):
        script.checkpoint_run_identity(checkpoint, None)
    saved = {'state': {'callbacks': {'LMEvalCallback': {'run': RUN}}}}
    assert script.checkpoint_run_identity(saved, None) == RUN
    with pytest.raises(ValueError, match=r'--objective \{"objective": "ce"\} contradicts the checkpoint'):
        script.checkpoint_run_identity(saved, {'objective': 'ce'})


def test_callback_without_save_folder_or_records_dir_stops_before_batch_1(tokenizer, local_tasks):
    callback = LMEvalCallback(tasks=['local_winogrande'], interval='2ba', limit=2, include_path=[local_tasks])
    with pytest.raises(ValueError, match=r'no save_folder\. Set callbacks\.lm_eval\.records_dir'):
        train_tiny(tokenizer, '2ba', callbacks=[callback])
