"""Data pipeline: download (resumable) -> raw shards -> ASCII -> Llama-3 tokens -> packed MDS -> training.

Offline: the downloader reads generated jsonl through ``--data-files`` (the same ``datasets``
streaming path as the hub). Most checks use max_seq_len 64; one builds 2048-token sequences.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf as om
from streaming import LocalDataset
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

sys.path.insert(0, os.path.dirname(__file__))
import data_helpers as h  # noqa: E402
from lm_eval_helpers import load_script  # noqa: E402

from prefix_composer.data import download as download_module  # noqa: E402
from prefix_composer.data.ascii_text import to_ascii  # noqa: E402
from prefix_composer.data.build_mds import create_mds  # noqa: E402
from prefix_composer.data.download import describe_source, download  # noqa: E402
from prefix_composer.data.manifest import check_run_data, read_mds_manifest  # noqa: E402
from prefix_composer.data.raw_shards import iter_raw_texts, read_raw_manifest  # noqa: E402
from prefix_composer.data.run_config import load_data_run_config  # noqa: E402
from prefix_composer.config import load_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_DOCS = 300
SEQ = 64
TRAIN_TOKENS, VAL_TOKENS = 12_000, 1_500


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    """Generated documents, their jsonl file, and a completed download of them (raw shards of 50 docs)."""
    root = str(tmp_path_factory.mktemp('corpus'))
    docs = h.documents(N_DOCS)
    data_file = h.write_jsonl(os.path.join(root, 'docs.jsonl'), docs)
    run = load_data_run_config(h.SMOKE_YAML, h.overrides(root, SEQ, TRAIN_TOKENS, VAL_TOKENS))
    raw = download(run.raw_dir, describe_source(None, None, [data_file]), run.train_tokens, run.val_tokens,
                   docs_per_shard=50, progress=False)
    return {'root': root, 'docs': docs, 'file': data_file, 'raw': raw}


def run_config(corpus, mds_name: str, max_seq_len: int = SEQ, val_tokens: int = VAL_TOKENS, **extra):
    """The smoke YAML reading ``corpus``'s raw shards and writing ``<root>/<mds_name>``."""
    overrides = h.overrides(corpus['root'], max_seq_len, TRAIN_TOKENS, val_tokens)
    overrides += [f'variables.data.mds_dir={os.path.join(corpus["root"], mds_name)}']
    overrides += [f'{k}={v}' for k, v in extra.items()]
    return load_data_run_config(h.SMOKE_YAML, overrides)


def expected_split_ids(docs: list[str], val_tokens: int) -> tuple[list[int], list[int], int]:
    """Independent reference: HF tokenizer per document, each non-empty one as BOS ids EOS, val-first rule."""
    tok = h.tokenizer()
    val, train, empty = [], [], 0
    for doc in docs:
        text = to_ascii(doc)
        if not text:
            empty += 1
            continue
        plain = tok(text, add_special_tokens=False, split_special_tokens=True)['input_ids']
        ids = [tok.bos_token_id, *plain, tok.eos_token_id]
        (val if len(val) < val_tokens and not train else train).extend(ids)
    return val, train, empty


def split_ids(mds_dir: str, split: str, seq_len: int) -> np.ndarray:
    ds = LocalDataset(mds_dir, split)
    samples = [ds[i]['tokens'] for i in range(len(ds))]
    assert all(s.dtype == np.int32 and s.shape == (seq_len,) for s in samples)
    return np.concatenate(samples)


def tree_hashes(folder: str) -> dict[str, str]:
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, '**', '*'), recursive=True)):
        if os.path.isfile(path):
            with open(path, 'rb') as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_ascii_rule_is_exactly_encode_ignore():
    docs = h.documents(40)
    assert any(not d.isascii() for d in docs) and any(d and not to_ascii(d) for d in docs)
    for doc in docs + ['naïve café 日本 🎉 ok', 'Ünïcödé—“x”']:
        assert to_ascii(doc) == doc.encode('ascii', 'ignore').decode('ascii')
    assert to_ascii('naïve café 日本 🎉 ok') == 'nave caf   ok'


def test_run_config_reads_training_yaml_with_overrides(tmp_path):
    run = load_data_run_config('yamls/prefix_unnorm_eps1.yaml', ['variables.max_seq_len=1024'])
    assert (run.hf_dataset, run.hf_config) == ('HuggingFaceFW/fineweb-edu', 'sample-100BT')
    assert (run.max_seq_len, run.tokenizer_kwargs) == (1024, {'model_max_length': 1024})
    assert run.mds_dir == '/mnt/data/fineweb_edu_sample100bt/mds_llama3_2048'
    assert (run.train_tokens, run.val_tokens, run.train_split, run.val_split) == (2_000_000_000, 10_000_000, 'train', 'val')
    without_raw_dir = om.load(h.SMOKE_YAML)
    del without_raw_dir.variables.data.raw_dir
    om.save(without_raw_dir, tmp_path / 'no_raw_dir.yaml')
    with pytest.raises(ValueError, match='variables.data.raw_dir'):
        load_data_run_config(str(tmp_path / 'no_raw_dir.yaml'))
    with pytest.raises(ValueError, match='eval_loader.dataset.local'):
        load_data_run_config('yamls/prefix_unnorm_eps1.yaml', [f'eval_loader.dataset.local={tmp_path}'])


def test_packed_sequences_reproduce_normalised_documents(corpus):
    run = run_config(corpus, 'mds_w1')
    manifest = create_mds(run, workers=1, batch_docs=16, progress=False)
    docs = corpus['docs'][:corpus['raw'].documents]
    val_ref, train_ref, empty = expected_split_ids(docs, VAL_TOKENS)
    assert empty == 4 and manifest['documents'] == {'read': len(docs), 'empty_after_ascii': empty}
    tok, bos, eos = h.tokenizer(), h.tokenizer().bos_token_id, h.tokenizer().eos_token_id
    assert eos not in tok(h.SPELLED_EOS, add_special_tokens=False, split_special_tokens=True)['input_ids']
    assert manifest['config']['tokenizer']['bos_token_id'] == bos == 128000
    for split, ref in (('val', val_ref), ('train', train_ref)):
        stats = manifest['splits'][split]
        got = split_ids(run.mds_dir, split, SEQ)
        assert stats['tokens'] == len(ref) and stats['sequences'] == len(ref) // SEQ == len(got) // SEQ
        assert stats['dropped_tail_tokens'] == len(ref) - len(got) < SEQ
        assert got.tolist() == ref[:len(got)]
        assert stats['documents'] == ref.count(bos) == ref.count(eos)
        assert split != 'val' or got[0] == bos  # the first sequence starts a document
        # decode(concat of sequences) + the dropped tail == the split's normalised documents, each BOS text EOS
        text = ''.join(tok.bos_token + to_ascii(d) + tok.eos_token for d in docs if to_ascii(d))
        decoded = tok.decode(got.tolist() + ref[len(got):], clean_up_tokenization_spaces=False)
        assert decoded == (text[:len(decoded)] if split == 'val' else text[-len(decoded):])
    assert manifest['splits']['val']['tokens'] >= VAL_TOKENS
    assert read_mds_manifest(run.mds_dir) == manifest


def test_shards_identical_for_one_and_two_workers(corpus):
    one = create_mds(run_config(corpus, 'det_w1'), workers=1, batch_docs=8, progress=False)
    two = create_mds(run_config(corpus, 'det_w2'), workers=2, batch_docs=8, progress=False)
    assert one == two
    hashes_one = tree_hashes(os.path.join(corpus['root'], 'det_w1'))
    assert len([p for p in hashes_one if p.endswith('.mds')]) >= 2
    assert hashes_one == tree_hashes(os.path.join(corpus['root'], 'det_w2'))


def test_sequences_of_2048_tokens(tmp_path):
    docs = h.documents(40, seed=5, mean_words=500)
    data_file = h.write_jsonl(str(tmp_path / 'docs.jsonl'), docs)
    run = load_data_run_config(h.SMOKE_YAML, h.overrides(str(tmp_path), 2048, 20_000, 2048))
    download(run.raw_dir, describe_source(None, None, [data_file]), 10**9, 0, progress=False)
    manifest = create_mds(run, workers=2, progress=False)
    val_ref, train_ref, _ = expected_split_ids(docs, 2048)
    for split, ref in (('val', val_ref), ('train', train_ref)):
        got = split_ids(run.mds_dir, split, 2048)
        assert len(got) == 2048 * (len(ref) // 2048) == 2048 * manifest['splits'][split]['sequences'] > 0
        assert got.tolist() == ref[:len(got)]
        assert manifest['splits'][split]['dropped_tail_tokens'] == len(ref) - len(got)


def test_download_resumes_after_interruption(corpus, tmp_path, monkeypatch):
    source = describe_source(None, None, [corpus['file']])
    real_iter_texts = download_module.iter_texts

    def interrupted(stream, start):
        for i, text in enumerate(real_iter_texts(stream, start)):
            if i == 120:  # mid-way through the third shard of 50
                raise KeyboardInterrupt
            yield text

    monkeypatch.setattr(download_module, 'iter_texts', interrupted)
    with pytest.raises(KeyboardInterrupt):
        download(str(tmp_path), source, TRAIN_TOKENS, VAL_TOKENS, docs_per_shard=50, progress=False)
    assert read_raw_manifest(str(tmp_path)).documents == 100
    assert os.path.exists(tmp_path / 'shard-00002.parquet.tmp')
    monkeypatch.setattr(download_module, 'iter_texts', real_iter_texts)
    resumed = download(str(tmp_path), source, TRAIN_TOKENS, VAL_TOKENS, docs_per_shard=50, progress=False)
    assert not glob.glob(str(tmp_path / '*.tmp'))
    assert resumed.documents == corpus['raw'].documents < N_DOCS  # same deterministic stopping point
    texts = [t for batch in iter_raw_texts(str(tmp_path), resumed, 64) for t in batch]
    assert texts == corpus['docs'][:resumed.documents]
    assert [s.first_document for s in resumed.shards] == list(range(0, resumed.documents, 50))
    # more budget later: continues from the stored documents
    more = download(str(tmp_path), source, TRAIN_TOKENS * 10, VAL_TOKENS, docs_per_shard=50, progress=False)
    assert more.source_exhausted and more.documents == N_DOCS
    assert [t for b in iter_raw_texts(str(tmp_path), more, 64) for t in b] == corpus['docs']


def test_download_bad_input(tmp_path, corpus):
    empty = tmp_path / 'empty.jsonl'
    empty.write_text('')
    with pytest.raises(ValueError, match='yielded no documents'):
        download(str(tmp_path / 'raw_empty'), describe_source(None, None, [str(empty)]), 100, 10, progress=False)
    with pytest.raises(ValueError, match='not of'):
        download(os.path.join(corpus['root'], 'raw'), describe_source(None, None, [str(empty)]), 100, 10, progress=False)
    with pytest.raises(FileNotFoundError, match='not found'):
        describe_source(None, None, [str(tmp_path / 'missing.jsonl')])
    with pytest.raises(ValueError, match='hf_dataset'):
        describe_source(None, None, [])


def test_create_mds_bad_input(corpus, tmp_path):
    def partial_dirs():
        return glob.glob(os.path.join(corpus['root'], '*.partial')) + glob.glob(str(tmp_path / '*.partial'))

    # a corpus too small for one val sequence, and val_tokens 0: nothing left behind
    for seq_len, val_tokens in ((8192, VAL_TOKENS), (SEQ, 0)):
        run = run_config(corpus, f'small_{seq_len}_{val_tokens}', max_seq_len=seq_len, val_tokens=val_tokens)
        with pytest.raises(ValueError, match='Corpus too small'):
            create_mds(run, workers=1, progress=False)
        assert not os.path.exists(run.mds_dir) and not partial_dirs()
    # every document empty after the ASCII rule
    data_file = h.write_jsonl(str(tmp_path / 'non_ascii.jsonl'), list(h.EMPTY_AFTER_ASCII) * 3)
    run = load_data_run_config(h.SMOKE_YAML, h.overrides(str(tmp_path), SEQ, 100, 10))
    download(run.raw_dir, describe_source(None, None, [data_file]), 10**6, 0, progress=False)
    with pytest.raises(ValueError, match='All 12 documents .* empty after the ASCII rule'):
        create_mds(run, workers=1, progress=False)
    assert not os.path.exists(run.mds_dir) and not partial_dirs()
    # no download yet
    with pytest.raises(FileNotFoundError, match='download_fineweb_edu.py'):
        create_mds(run_config(corpus, 'x', **{'variables.data.raw_dir': str(tmp_path / 'none')}), workers=1)


def test_existing_output_from_other_config_is_refused(corpus):
    run = run_config(corpus, 'mds_existing')
    first = create_mds(run, workers=1, progress=False)
    stamp = os.path.getmtime(os.path.join(run.mds_dir, 'manifest.json'))
    assert create_mds(run, workers=2, progress=False) == first  # same config: up to date, untouched
    assert os.path.getmtime(os.path.join(run.mds_dir, 'manifest.json')) == stamp
    other = run_config(corpus, 'mds_existing', max_seq_len=32)
    with pytest.raises(FileExistsError, match=r'max_seq_len: 64 -> 32.*--overwrite'):
        create_mds(other, workers=1, progress=False)
    assert read_mds_manifest(run.mds_dir) == first
    rebuilt = create_mds(other, workers=1, overwrite=True, progress=False)
    assert rebuilt['config']['max_seq_len'] == 32 and read_mds_manifest(run.mds_dir) == rebuilt
    os.makedirs(os.path.join(corpus['root'], 'not_ours'))
    with pytest.raises(FileExistsError, match='no manifest.json'):
        create_mds(run_config(corpus, 'not_ours'), workers=1, progress=False)


def test_unreadable_raw_shard_is_named(corpus, tmp_path):
    data_file = h.write_jsonl(str(tmp_path / 'docs.jsonl'), corpus['docs'][:120])
    run = load_data_run_config(h.SMOKE_YAML, h.overrides(str(tmp_path), SEQ, 100, 10))
    download(run.raw_dir, describe_source(None, None, [data_file]), 10**6, 0, docs_per_shard=50, progress=False)
    shard = os.path.join(run.raw_dir, 'shard-00001.parquet')
    with open(shard, 'r+b') as f:
        f.truncate(os.path.getsize(shard) // 2)
    with pytest.raises(ValueError, match='shard-00001.parquet does not match the sha256'):
        create_mds(run, workers=1, progress=False)
    os.remove(shard)
    with pytest.raises(ValueError, match='shard-00001.parquet .* is missing'):
        create_mds(run, workers=1, progress=False)
    assert not os.path.exists(run.mds_dir) and not os.path.exists(run.mds_dir + '.partial')


def test_check_run_data_against_manifest(corpus, caplog):
    run = run_config(corpus, 'mds_check')
    with caplog.at_level(logging.WARNING, logger='prefix_composer.data.build_mds'):
        built = create_mds(run, workers=1, progress=False)
    assert built['splits']['train']['tokens'] >= TRAIN_TOKENS and not caplog.records  # enough: no warning
    cfg = load_config(h.SMOKE_YAML, [f'variables.data.mds_dir={run.mds_dir}', f'max_seq_len={SEQ}'])
    tok = h.tokenizer()
    check_run_data(cfg, tok)  # matches

    with pytest.raises(ValueError, match='sequences of 64 tokens but the run.s max_seq_len is 128'):
        check_run_data(load_config(h.SMOKE_YAML, [f'variables.data.mds_dir={run.mds_dir}']), tok)
    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok.backend_tokenizer.to_str()),
                                    eos_token=tok.eos_token)
    other.add_tokens(['<extra>'])
    with pytest.raises(ValueError, match='tokenised with .llama3_packaged.'):
        check_run_data(cfg, other)
    bad_split = om.merge(cfg, om.create({'eval_loader': {'dataset': {'split': 'test'}}}))
    with pytest.raises(ValueError, match="split 'test' is not in"):
        check_run_data(bad_split, tok)
    no_manifest = os.path.join(corpus['root'], 'plain_mds')
    os.makedirs(no_manifest)
    with caplog.at_level(logging.WARNING, logger='prefix_composer.data.manifest'):
        check_run_data(load_config(h.SMOKE_YAML, [f'variables.data.mds_dir={no_manifest}']), tok)
    assert sum('has no manifest.json' in r.getMessage() for r in caplog.records) == 2
    with pytest.raises(FileNotFoundError, match='create_mds.py'):
        check_run_data(load_config(h.SMOKE_YAML, [f'variables.data.mds_dir={no_manifest}/missing']), tok)


def test_data_of_the_previous_format_is_refused_with_a_rebuild_message(corpus):
    """Format 1 (documents as ids EOS, no BOS) can neither train nor be taken as already built."""
    run = run_config(corpus, 'mds_format1')
    create_mds(run, workers=1, progress=False)
    path = os.path.join(run.mds_dir, 'manifest.json')
    with open(path) as f:
        old = json.load(f)
    old['format'] = 'prefix_composer.mds/1'
    del old['config']['tokenizer']['bos_token_id']
    with open(path, 'w') as f:
        json.dump(old, f)
    cfg = load_config(h.SMOKE_YAML, [f'variables.data.mds_dir={run.mds_dir}', f'max_seq_len={SEQ}'])
    message = r"format 'prefix_composer.mds/1', but this code reads 'prefix_composer.mds/2'.*BOS.*create_mds.py.*--overwrite"
    with pytest.raises(ValueError, match=message):
        check_run_data(cfg, h.tokenizer())
    with pytest.raises(ValueError, match=message):
        create_mds(run, workers=1, progress=False)
    rebuilt = create_mds(run, workers=1, overwrite=True, progress=False)
    assert rebuilt['format'] == 'prefix_composer.mds/2'
    check_run_data(cfg, h.tokenizer())


def test_produced_mds_trains_with_composer(corpus):
    run = run_config(corpus, 'mds_train', max_seq_len=32)
    create_mds(run, workers=2, progress=False)
    run_root = os.path.join(corpus['root'], 'train_runs')
    cmd = [sys.executable, 'train.py', h.SMOKE_YAML,
           f'variables.data.mds_dir={run.mds_dir}', f'variables.run_root={run_root}', 'max_seq_len=32',
           'global_train_batch_size=4', 'device_train_microbatch_size=4', 'device_eval_batch_size=4',
           'max_duration=3ba', 'eval_interval=3ba', 'save_interval=3ba']
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(os.path.join(run_root, 'smoke_cpu', 'metrics.csv')) as f:
        rows = list(csv.DictReader(f))
    assert any(r['batch'] == '3' for r in rows)


def test_a_train_split_below_train_tokens_warns(corpus, caplog):
    run = run_config(corpus, 'mds_short', **{'variables.data.train_tokens': 10**6})
    with caplog.at_level(logging.WARNING, logger='prefix_composer.data.build_mds'):
        built = create_mds(run, workers=1, progress=False)
    tokens = built['splits']['train']['tokens']
    assert 0 < tokens < 10**6
    assert [r.getMessage() for r in caplog.records] == [
        f'Train split has {tokens} tokens, fewer than variables.data.train_tokens=1000000: training will repeat data.']


@pytest.mark.parametrize('script, options', [
    ('download_fineweb_edu', ['--run-config', '--data-files', '--train-tokens', '--val-tokens', '--margin',
                              '--chars-per-token', '--docs-per-shard', '--overwrite', '--no-progress']),
    ('create_mds', ['--run-config', '--workers', '--batch-docs', '--compression', '--overwrite', '--no-progress']),
])
def test_data_scripts_help_lists_their_options(script, options, capsys):
    with pytest.raises(SystemExit) as done:
        load_script(script).main(['--help'])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith('usage: ')
    assert [o for o in options if f'  {o}' not in out] == []  # each listed as an option line


def test_download_script_refuses_a_changed_chars_per_token(corpus):
    raw_dir = os.path.join(corpus['root'], 'raw')
    with pytest.raises(SystemExit, match=rf'^error: {raw_dir} holds a download of .* \(chars_per_token=5\.0\), not of '
                                         r'.* \(chars_per_token=4\.5\); pass --overwrite to replace it\.$'):
        load_script('download_fineweb_edu').main(['--run-config', h.SMOKE_YAML, '--data-files', corpus['file'],
                                                  '--chars-per-token', '4.5', '--no-progress',
                                                  *h.overrides(corpus['root'], SEQ, TRAIN_TOKENS, VAL_TOKENS)])
    assert read_raw_manifest(raw_dir) == corpus['raw']  # the download is left as it was


def test_create_mds_script_refuses_zero_workers(tmp_path):
    with pytest.raises(SystemExit, match=r'^error: workers and batch_docs must be >= 1, got 0, 256\.$'):
        load_script('create_mds').main(['--run-config', h.SMOKE_YAML, '--workers', '0', '--no-progress',
                                        *h.overrides(str(tmp_path), SEQ, TRAIN_TOKENS, VAL_TOKENS)])
    assert os.listdir(tmp_path) == []
