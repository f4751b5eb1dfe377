"""Raw shards -> ASCII -> tokens (parallel workers) -> packed ``max_seq_len`` sequences -> MDS.

Output ``<mds_dir>/{<val split>,<train split>}/`` (``streaming.MDSWriter``, columns
``{'tokens': 'ndarray:int32'}``) plus ``<mds_dir>/manifest.json``. Everything is written to
``<mds_dir>.partial`` and renamed into place at the end, so a folder named ``mds_dir`` is always
complete. The main process packs and writes batches in input order, so the shards are
byte-identical for any number of workers.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Optional

from streaming import MDSWriter

from prefix_composer.data.ascii_text import ASCII_RULE
from prefix_composer.data.manifest import COLUMNS, MDS_FORMAT, mds_manifest_path, read_mds_manifest
from prefix_composer.data.packing import SequencePacker, SplitRouter
from prefix_composer.data.parallel_tokenize import load_worker_tokenizer, ordered_bounded_map, tokenize_batch
from prefix_composer.data.progress import DocTokenProgress
from prefix_composer.data.raw_shards import RawManifest, iter_raw_texts, manifest_path, read_raw_manifest
from prefix_composer.data.run_config import DataRunConfig
from prefix_composer.files import sha256_file, write_json_atomic
from prefix_composer.tokenizer import tokenizer_content_hash

log = logging.getLogger(__name__)

DEFAULT_BATCH_DOCS = 256


def _differences(old: dict, new: dict, prefix: str = '') -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for k in keys:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f'{prefix}{k}.')
        elif a != b:
            out.append(f'{prefix}{k}: {a!r} -> {b!r}')
    return out


def read_input(run: DataRunConfig) -> RawManifest:
    """The raw shards' manifest; missing or empty input is an error before any work starts."""
    raw = read_raw_manifest(run.raw_dir)
    if raw is None:
        raise FileNotFoundError(f'No raw shards: {manifest_path(run.raw_dir)} is missing; run '
                                f'scripts/download_fineweb_edu.py --run-config {run.yaml_path} first.')
    if raw.documents == 0:
        raise ValueError(f'{run.raw_dir} holds no documents (empty input).')
    return raw


def output_config(run: DataRunConfig, tokenizer, raw: RawManifest, compression: Optional[str]) -> dict:
    """The manifest's ``config``: everything the MDS content depends on."""
    for role in ('bos', 'eos'):
        if getattr(tokenizer, f'{role}_token_id') is None:
            raise ValueError(f'Tokenizer {run.tokenizer_name} has no {role}_token: every document is framed as '
                             f'BOS ids EOS; set tokenizer.kwargs.{role}_token in {run.yaml_path}.')
    return {
        'tokenizer': {'name': run.tokenizer_name, 'kwargs': run.tokenizer_kwargs,
                      'content_sha256': tokenizer_content_hash(tokenizer), 'bos_token_id': tokenizer.bos_token_id,
                      'eos_token_id': tokenizer.eos_token_id, 'add_special_tokens': False, 'split_special_tokens': True},
        'max_seq_len': run.max_seq_len,
        'ascii_rule': ASCII_RULE,
        'val_tokens': run.val_tokens,
        'splits': [run.val_split, run.train_split],
        'columns': COLUMNS,
        'compression': compression,
        'source': {'raw_dir': os.path.abspath(run.raw_dir), 'raw_manifest_sha256': sha256_file(manifest_path(run.raw_dir)),
                   'documents': raw.documents, 'raw_source': raw.source},
    }


def _check_output_dir(mds_dir: str, config: dict, overwrite: bool) -> Optional[dict]:
    """The existing manifest if ``mds_dir`` already holds exactly this config; refuse other content."""
    if not os.path.exists(mds_dir) or overwrite:
        return None
    existing = read_mds_manifest(mds_dir)
    if existing is None:
        raise FileExistsError(f'{mds_dir} exists but has no manifest.json (not made by create_mds). '
                              'Pass --overwrite to replace it.')
    if existing['config'] != config:
        diff = '; '.join(_differences(existing['config'], config))
        raise FileExistsError(f'{mds_dir} was built from a different config ({diff}). Pass --overwrite to replace it.')
    return existing


def _write_splits(run: DataRunConfig, tokenizer, raw: RawManifest, out_dir: str, config: dict, workers: int,
                  batch_docs: int, progress: bool) -> dict:
    seq_len = run.max_seq_len
    writers = {split: MDSWriter(out=os.path.join(out_dir, split), columns=COLUMNS, compression=config['compression'])
               for split in (run.val_split, run.train_split)}
    packers = {split: SequencePacker(seq_len, lambda seq, w=writer: w.write({'tokens': seq}))
               for split, writer in writers.items()}
    router = SplitRouter(run.val_tokens, packers[run.val_split], packers[run.train_split])
    bar = DocTokenProgress('create_mds', total_docs=raw.documents, disable=not progress)
    read = empty = 0
    batches = ordered_bounded_map(tokenize_batch, iter_raw_texts(run.raw_dir, raw, batch_docs), workers,
                                  load_worker_tokenizer,
                                  (tokenizer.backend_tokenizer.to_str(), tokenizer.bos_token_id, tokenizer.eos_token_id))
    for batch in batches:
        router.add(batch)
        read += batch.documents
        empty += batch.empty
        bar.update(batch.documents, len(batch.ids))
    bar.close()
    for writer in writers.values():
        writer.finish()
    return {'format': MDS_FORMAT, 'config': config, 'splits': {s: p.stats() for s, p in packers.items()},
            'documents': {'read': read, 'empty_after_ascii': empty}}


def _check_counts(run: DataRunConfig, manifest: dict) -> None:
    splits = manifest['splits']
    if manifest['documents']['read'] == manifest['documents']['empty_after_ascii']:
        raise ValueError(f'All {manifest["documents"]["read"]} documents in {run.raw_dir} are empty after the ASCII rule.')
    for split in (run.val_split, run.train_split):
        if splits[split]['sequences'] == 0:
            raise ValueError(
                f'Corpus too small: split {split!r} got {splits[split]["tokens"]} tokens, less than one sequence of '
                f'{run.max_seq_len} (val_tokens={run.val_tokens}; download more or lower val_tokens/max_seq_len).',
            )
    if splits[run.train_split]['tokens'] < run.train_tokens:
        log.warning('Train split has %d tokens, fewer than variables.data.train_tokens=%d: training will repeat data.',
                    splits[run.train_split]['tokens'], run.train_tokens)


def create_mds(run: DataRunConfig, *, workers: int, batch_docs: int = DEFAULT_BATCH_DOCS, overwrite: bool = False,
               compression: Optional[str] = None, progress: bool = True) -> dict:
    """Build ``run.mds_dir`` from ``run.raw_dir`` (see module doc); returns the manifest written."""
    if workers < 1 or batch_docs < 1:
        raise ValueError(f'workers and batch_docs must be >= 1, got {workers}, {batch_docs}.')
    raw = read_input(run)
    tokenizer = run.build_tokenizer()
    config = output_config(run, tokenizer, raw, compression)
    mds_dir = os.path.normpath(run.mds_dir)
    existing = _check_output_dir(mds_dir, config, overwrite)
    if existing is not None:
        log.info('%s is already built from this config: nothing to do.', mds_dir)
        return existing
    partial = mds_dir + '.partial'
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        manifest = _write_splits(run, tokenizer, raw, partial, config, workers, batch_docs, progress)
        _check_counts(run, manifest)
        write_json_atomic(mds_manifest_path(partial), manifest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if os.path.exists(mds_dir):
        shutil.rmtree(mds_dir)
    os.replace(partial, mds_dir)
    for split, stats in manifest['splits'].items():
        log.info('%s/%s: %d documents, %d tokens -> %d sequences of %d (+%d tail tokens dropped).', mds_dir, split,
                 stats['documents'], stats['tokens'], stats['sequences'], run.max_seq_len, stats['dropped_tail_tokens'])
    return manifest
