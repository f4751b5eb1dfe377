"""Per-item validation records: values against a float64 brute force on the real vocabulary, every
sample of the split once (MDS sample index), replacement after an autoresume, the same bytes from 1
and 2 gloo ranks, a misconfigured eval loader refused before batch 1, eval_checkpoint's file."""

from __future__ import annotations

import argparse
import os

import pytest
import torch
import torch.distributed
from composer import Trainer
from composer.core import Evaluator
from llmfoundry.data.text_data import build_text_dataloader

from lm_eval_helpers import load_script, tiny_model, token_loader
from prefix_composer.evaluation.records import read_records, records_by_batch
from prefix_composer.evaluation.eval_split import sample_tokens
from prefix_composer.evaluation.validation_items import CLASSES, ValidationItems
from prefix_composer.objectives.vocab import bytes_to_unicode
from prefix_composer.tokenizer import PackagedLlama3Tokenizer

SEQ_LEN = 32


def eval_loader(tokenizer, mds, shuffle=False, drop_last=False, batch_size=4):
    spec = build_text_dataloader(tokenizer, batch_size, {'local': str(mds), 'split': 'val', 'shuffle': shuffle,
                                                         'max_seq_len': SEQ_LEN}, drop_last=drop_last, num_workers=0,
                                 pin_memory=False, prefetch_factor=None, persistent_workers=False)
    return Evaluator(label='eval', dataloader=spec, metric_names=['LanguageCrossEntropy'])


def train(tokenizer, mds, folder, duration='2ba', eval_interval='1ba', subset=-1, lr=1e-2, train_batch=4, **kwargs):
    model = tiny_model(tokenizer)
    trainer = Trainer(model=model, train_dataloader=token_loader(tokenizer, seq_len=SEQ_LEN, batch_size=train_batch),
                      eval_dataloader=eval_loader(tokenizer, mds, **kwargs.pop('loader', {})), eval_interval=eval_interval,
                      eval_subset_num_batches=subset, max_duration=duration, callbacks=[ValidationItems()],
                      optimizers=torch.optim.AdamW(model.parameters(), lr=lr), save_folder=str(folder / 'checkpoints'),
                      device='cpu', seed=17, progress_bar=False, log_to_console=False, run_name='r', **kwargs)
    trainer.fit()
    trainer.close()
    return model, trainer


def brute_force_items(hf_model, tokenizer, sequences: dict[int, torch.Tensor]) -> dict[int, dict]:
    """float64 log-softmax position by position; classes from the byte pieces counted directly."""
    table = {c: b for b, c in bytes_to_unicode().items()}
    pieces = [bytes(table[c] for c in p) for p in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))]
    specials = set(tokenizer.added_tokens_decoder)
    known = {p for i, p in enumerate(pieces) if i not in specials}
    model = hf_model.double().eval()
    out = {}
    with torch.no_grad():
        for sample, ids in sequences.items():
            logp = torch.log_softmax(model(input_ids=ids[None]).logits[0].double(), dim=-1)
            tokens, total = 0, 0.0
            counts, sums = dict.fromkeys(CLASSES, 0), dict.fromkeys(CLASSES, 0.0)
            for t in range(len(ids) - 1):
                y = int(ids[t + 1])
                nll = -float(logp[t, y])
                tokens, total = tokens + 1, total + nll
                if y in specials:
                    continue
                n_prefixes = sum(pieces[y][:k] in known for k in range(1, len(pieces[y])))
                size = len(pieces[y])
                for c in (f'prefixes_{min(n_prefixes, 3)}' if n_prefixes < 3 else 'prefixes_3+',
                          'bytes_1' if size == 1 else 'bytes_2-3' if size <= 3 else 'bytes_4-6' if size <= 6 else 'bytes_7+'):
                    counts[c] += 1
                    sums[c] += nll
            out[sample] = {'tokens': tokens, 'nll_sum': total, 'class_tokens': counts, 'class_nll_sum': sums}
    hf_model.float()
    return out


def test_records_equal_a_float64_brute_force_for_every_sample(tokenizer, tiny_mds, tmp_path):
    model, trainer = train(tokenizer, tiny_mds, tmp_path)
    folder = tmp_path / 'validation'
    assert sorted(records_by_batch(str(folder))) == [1, 2]
    records = read_records(str(folder / 'ba2.jsonl.gz'))
    dataset = trainer.state.evaluators[0].dataloader.dataloader.dataset
    sequences = {i: sample_tokens(dataset, i) for i in range(dataset.num_samples)}
    assert [item['doc_id'] for item in records.items] == list(range(dataset.num_samples)) and len(sequences) > 8
    assert records.header['settings']['kind'] == 'validation' and records.header['settings']['items']['val']['n'] == len(sequences)
    expected = brute_force_items(model.model, tokenizer, sequences)
    classes_seen = set()
    for item in records.items:
        ref = expected[item['doc_id']]
        assert item['tokens'] == ref['tokens'] == SEQ_LEN - 1 and item['class_tokens'] == ref['class_tokens']
        assert item['nll_sum'] == pytest.approx(ref['nll_sum'], rel=1e-5)
        assert item['metrics']['nll'] == pytest.approx(ref['nll_sum'] / ref['tokens'], rel=1e-5)
        for c in CLASSES:
            assert item['class_nll_sum'][c] == pytest.approx(ref['class_nll_sum'][c], rel=1e-5, abs=1e-6)
            n = ref['class_tokens'][c]
            assert (item['metrics'][f'nll_{c}'] is None) == (n == 0)
            if n:
                classes_seen.add(c)
                assert item['metrics'][f'nll_{c}'] == pytest.approx(ref['class_nll_sum'][c] / n, rel=1e-5)
    assert classes_seen == set(CLASSES)  # the sample text has tokens of every class
    # token-weighted over items, the records give the evaluator's own validation cross-entropy
    total = sum(i['nll_sum'] for i in records.items) / sum(i['tokens'] for i in records.items)
    assert total == pytest.approx(float(trainer.state.eval_metric_values['LanguageCrossEntropy']), rel=1e-5)

    # scripts/eval_checkpoint.py --val-data rewrites the callback's file from the final checkpoint
    by_callback = (folder / 'ba2.jsonl.gz').read_bytes()
    os.remove(folder / 'ba2.jsonl.gz')
    load_script('eval_checkpoint').main([str(tmp_path), '--tasks', 'charbench_count_single', '--limit', '1',
                                         '--val-data', str(tiny_mds / 'val'), '--val-batch-size', '4', '--device', 'cpu'])
    assert (folder / 'ba2.jsonl.gz').read_bytes() == by_callback


def test_records_past_the_resumed_checkpoint_are_replaced(tokenizer, tiny_mds, tmp_path):
    folder = tmp_path / 'validation'
    train(tokenizer, tiny_mds, tmp_path, duration='4ba', save_interval='2ba')
    straight = {b: (folder / f'ba{b}.jsonl.gz').read_bytes() for b in (1, 2, 3, 4)}
    checkpoints = tmp_path / 'checkpoints'
    os.remove(checkpoints / 'ep0-ba4-rank0.pt')
    os.remove(checkpoints / 'latest-rank0.pt')
    os.symlink('ep0-ba2-rank0.pt', checkpoints / 'latest-rank0.pt')
    (folder / 'ba4.jsonl.gz').write_bytes(b'written by the preempted run')
    (folder / 'ba3.jsonl.gz').unlink()
    train(tokenizer, tiny_mds, tmp_path, duration='4ba', eval_interval='2ba', save_interval='2ba', autoresume=True)
    assert sorted(records_by_batch(str(folder))) == [1, 2, 4]
    assert (folder / 'ba4.jsonl.gz').read_bytes() == straight[4]


def rank_worker(rank: int, world_size: int, port: int, args) -> list[int]:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
                      NODE_RANK='0', MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from pathlib import Path
    folder = Path(args.out) / f'{world_size}ranks'
    # the same 4 samples per global batch and unchanged weights (lr 0: DDP's gradient sum differs in the last bits)
    train(PackagedLlama3Tokenizer(), args.mds, folder, duration='1ba', eval_interval='1ba', lr=0.0,
          train_batch=4 // world_size, loader={'batch_size': 3})
    return sorted(records_by_batch(str(folder / 'validation')))


def test_two_gloo_ranks_write_the_single_rank_records_byte_for_byte(tiny_mds, tmp_path):
    bench = load_script('bench_lm_eval')
    args = argparse.Namespace(mds=tiny_mds, out=str(tmp_path))
    assert bench.run_processes(rank_worker, 1, args) == [[1]]
    assert bench.run_processes(rank_worker, 2, args) == [[1], [1]]  # one shared folder
    one = (tmp_path / '1ranks' / 'validation' / 'ba1.jsonl.gz').read_bytes()
    assert one == (tmp_path / '2ranks' / 'validation' / 'ba1.jsonl.gz').read_bytes()


@pytest.mark.parametrize('kwargs, key', [
    ({'loader': {'shuffle': True}}, 'eval_loader.dataset.shuffle'),
    ({'loader': {'drop_last': True}}, 'eval_loader.drop_last'),
    ({'subset': 1}, 'eval_subset_num_batches'),
])
def test_an_eval_loader_that_evaluates_another_set_per_run_is_refused_before_batch_1(tokenizer, tiny_mds, tmp_path,
                                                                                      kwargs, key):
    with pytest.raises(ValueError, match=key) as error:
        train(tokenizer, tiny_mds, tmp_path, **kwargs)
    assert 'validation_items' in str(error.value)
    assert not (tmp_path / 'checkpoints').exists() or not any((tmp_path / 'checkpoints').iterdir())
