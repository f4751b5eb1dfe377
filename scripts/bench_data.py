"""Benchmark create_mds against llm-foundry's convert_dataset_hf approach on the same generated corpus.

    uv run python scripts/bench_data.py [--mb 200] [--workers 1 2 ...] [--seq-len 2048]

Generates a deterministic synthetic corpus (``prefix_composer.data.synthetic``) of ``--mb`` MB as
raw shards, then times, in this one invocation:

* baseline: llm-foundry's ``ConcatTokensDataset`` (one ``tokenizer(text)`` call per document into
  a concat buffer, single process, as ``convert_dataset_hf`` does) over the ASCII-normalised
  documents, written with ``MDSWriter``;
* ``create_mds`` with each worker count (default 1, 2 and all cores when there are more than 2).

All runs use the same tokenizer (``llama3_packaged``) with ``TOKENIZERS_PARALLELISM=false``
(llm-foundry sets it), so every process tokenises on one thread. tokens/s counts the tokens of
the corpus (create_mds's manifest: BOS + ids + EOS per document). ``CPU s`` is the CPU time of
this process and its workers: on a busy machine, where other jobs take cores, wall-clock ratios
understate the speed-up, and the CPU column shows what the work itself costs. The outputs of
all worker counts are checked to be byte-identical.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import resource
import shutil
import tempfile
import time

from streaming import MDSWriter

from prefix_composer.data.ascii_text import to_ascii
from prefix_composer.data.build_mds import create_mds
from prefix_composer.data.manifest import COLUMNS
from prefix_composer.data.raw_shards import RawManifest, RawShardWriter, iter_raw_texts, write_raw_manifest
from prefix_composer.data.run_config import DataRunConfig
from prefix_composer.data.synthetic import SyntheticCorpus, vocabulary_words
from prefix_composer.objectives.vocab import token_byte_strings

DOCS_PER_SHARD = 20_000


def write_corpus(raw_dir: str, words: list[str], megabytes: float, seed: int) -> RawManifest:
    """Synthetic documents of ``megabytes`` MB (UTF-8) as raw shards with their manifest."""
    os.makedirs(raw_dir)
    manifest = RawManifest(source={'kind': 'synthetic', 'seed': seed, 'megabytes': megabytes}, chars_per_token=5.0)
    shard = None
    for doc in SyntheticCorpus(words, seed).until_bytes(int(megabytes * 1e6)):
        if shard is None:
            shard = RawShardWriter(raw_dir, len(manifest.shards), manifest.documents)
        shard.add(doc, len(to_ascii(doc)))
        if shard.documents == DOCS_PER_SHARD:
            manifest.shards.append(shard.finish())
            shard = None
    if shard is not None:
        manifest.shards.append(shard.finish())
    write_raw_manifest(raw_dir, manifest)
    return manifest


def run_baseline(tokenizer, raw_dir: str, raw: RawManifest, out: str, seq_len: int) -> int:
    """llm-foundry's convert_dataset_hf path (ConcatTokensDataset -> MDSWriter); returns sequences written."""
    from llmfoundry.data import ConcatTokensDataset

    documents = ({'text': to_ascii(t)} for batch in iter_raw_texts(raw_dir, raw, 1000) for t in batch)
    dataset = ConcatTokensDataset(hf_dataset=documents, tokenizer=tokenizer, max_length=seq_len,
                                  bos_text=tokenizer.bos_token, eos_text=tokenizer.eos_token, no_wrap=False)
    sequences = 0
    with MDSWriter(out=out, columns=COLUMNS) as writer:
        for sample in dataset:
            writer.write(sample)
            sequences += 1
    return sequences


def cpu_seconds() -> float:
    """User + system CPU time of this process and its reaped children (the tokenizer workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def tree_digest(folder: str) -> str:
    digest = hashlib.sha256()
    for base, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(os.path.join(base, name), 'rb') as f:
                digest.update(name.encode() + hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--mb', type=float, default=200.0, help='corpus size in MB of UTF-8 text')
    parser.add_argument('--workers', type=int, nargs='+', help='worker counts (default: 1 2 and all cores if > 2)')
    parser.add_argument('--seq-len', type=int, default=2048)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--tmp', default=None, help='parent folder for the corpus and outputs (deleted afterwards)')
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    worker_counts = args.workers or ([1, 2] + ([cores] if cores > 2 else []))

    work = tempfile.mkdtemp(prefix='bench_data_', dir=args.tmp)
    try:
        run = DataRunConfig(yaml_path='<bench>', hf_dataset=None, hf_config=None, raw_dir=os.path.join(work, 'raw'),
                            mds_dir=os.path.join(work, 'mds'), train_tokens=0, val_tokens=1_000_000, tokenizer_name='llama3_packaged',
                            tokenizer_kwargs={'model_max_length': args.seq_len}, max_seq_len=args.seq_len,
                            train_split='train', val_split='val')
        tokenizer = run.build_tokenizer()
        start = time.perf_counter()
        raw = write_corpus(run.raw_dir, vocabulary_words(*token_byte_strings(tokenizer)), args.mb, args.seed)
        print(f'corpus: {raw.documents:,} documents, {args.mb:g} MB, generated in {time.perf_counter() - start:.0f} s; '
              f'{cores} cores, load average before timing {os.getloadavg()[0]:.2f}', flush=True)

        timings: list[tuple[str, float, float]] = []
        start, cpu = time.perf_counter(), cpu_seconds()
        run_baseline(tokenizer, run.raw_dir, raw, os.path.join(work, 'baseline'), args.seq_len)
        timings.append(('baseline (llm-foundry ConcatTokensDataset, 1 process)', time.perf_counter() - start,
                        cpu_seconds() - cpu))
        digests, tokens = set(), 0
        for workers in worker_counts:
            out = dataclasses.replace(run, mds_dir=os.path.join(work, f'mds_w{workers}'))
            start, cpu = time.perf_counter(), cpu_seconds()
            manifest = create_mds(out, workers=workers, progress=False)
            timings.append((f'create_mds, {workers} worker(s)', time.perf_counter() - start, cpu_seconds() - cpu))
            tokens = sum(s['tokens'] for s in manifest['splits'].values())
            digests.add(tree_digest(out.mds_dir))
            shutil.rmtree(out.mds_dir)

        base = timings[0][1]
        print(f'\n{tokens:,} tokens (BOS + ids + EOS per document), sequences of {args.seq_len}')
        print(f'{"run":<56} {"wall s":>8} {"tokens/s":>12} {"MB/s":>7} {"vs baseline":>11} {"CPU s":>8}')
        for name, wall, cpu in timings:
            print(f'{name:<56} {wall:>8.1f} {tokens / wall:>12,.0f} {args.mb / wall:>7.2f} {base / wall:>10.2f}x '
                  f'{cpu:>8.1f}')
        print(f'\noutputs identical across worker counts {worker_counts}: {len(digests) == 1}')
        print(f'peak RSS: main process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB, '
              f'largest worker {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB; '
              f'load average after {os.getloadavg()[0]:.2f}')
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
