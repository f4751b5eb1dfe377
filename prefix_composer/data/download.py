"""Stream FineWeb-Edu (or local json/parquet files) into raw parquet shards, resumably.

Source: ``datasets.load_dataset(hf_dataset, name=hf_config, split='train', streaming=True)`` or,
with ``data_files``, ``load_dataset('json'|'parquet', data_files=..., split='train', streaming=True)``;
everything after loading is the same code path.

Stopping rule (deterministic, a function of the stream only): documents are taken in stream order
until ``ascii_bytes / chars_per_token + documents >= target_tokens``, where ``ascii_bytes`` sums
``len(to_ascii(text))`` and ``target_tokens = ceil((train_tokens + val_tokens) * margin)``; the
document that crosses the target is the last one kept.

Resume: the manifest lists the completed shards; a restart deletes unlisted (partial) files,
skips ``manifest.documents`` documents of the stream (``IterableDataset.skip``, which re-reads but
does not store them) and continues, so no document is duplicated or missing.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Iterator, Optional, Sequence

from prefix_composer.data.ascii_text import to_ascii
from prefix_composer.data.progress import DocTokenProgress
from prefix_composer.data.raw_shards import (
    RawManifest,
    RawShardWriter,
    estimate_tokens,
    read_raw_manifest,
    remove_unlisted_shards,
    write_raw_manifest,
)

log = logging.getLogger(__name__)

DEFAULT_CHARS_PER_TOKEN = 5.0  # conservative: Llama-3 averages ~4.5 ASCII chars per token on English prose,
# so the estimate undercounts tokens and the download overshoots the target rather than falls short
DEFAULT_MARGIN = 1.05
DEFAULT_DOCS_PER_SHARD = 100_000
STREAM_BATCH_DOCS = 1_000


def file_builder(data_files: Sequence[str]) -> str:
    """``datasets`` builder for local files: ``json`` (.jsonl/.json, optionally .gz/.zst...) or ``parquet``."""
    kinds = set()
    for path in data_files:
        name = os.path.basename(path).lower()
        stem = name.rsplit('.', 1)[0] if name.endswith(('.gz', '.zst', '.bz2', '.xz')) else name
        if stem.endswith(('.jsonl', '.json')):
            kinds.add('json')
        elif stem.endswith('.parquet'):
            kinds.add('parquet')
        else:
            raise ValueError(f'{path}: --data-files takes .jsonl/.json (optionally compressed) or .parquet files.')
    if len(kinds) != 1:
        raise ValueError(f'--data-files mixes formats {sorted(kinds)}; give files of one format.')
    return kinds.pop()


def describe_source(hf_dataset: Optional[str], hf_config: Optional[str], data_files: Sequence[str]) -> dict:
    """The manifest's record of where documents come from; a resume must name the same source."""
    if data_files:
        missing = [p for p in data_files if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f'--data-files not found: {missing}')
        return {'kind': 'files', 'builder': file_builder(data_files),
                'data_files': [os.path.abspath(p) for p in data_files]}
    if not hf_dataset:
        raise ValueError('No source: set variables.data.hf_dataset in the YAML or pass --data-files.')
    return {'kind': 'hub', 'hf_dataset': hf_dataset, 'hf_config': hf_config, 'split': 'train'}


def open_stream(source: dict):
    """The source as a streaming ``datasets.IterableDataset`` (the hub code path for both kinds)."""
    import datasets

    if source['kind'] == 'files':
        return datasets.load_dataset(source['builder'], data_files=source['data_files'], split='train', streaming=True)
    return datasets.load_dataset(source['hf_dataset'], name=source['hf_config'], split=source['split'], streaming=True)


def iter_texts(stream, start: int) -> Iterator[str]:
    """Texts of the stream from document ``start`` on; a document without a string ``text`` is an error."""
    position = start
    for batch in stream.skip(start).iter(batch_size=STREAM_BATCH_DOCS):
        if 'text' not in batch:
            raise ValueError(f'Source documents have no `text` field (fields: {sorted(batch)}).')
        for text in batch['text']:
            if not isinstance(text, str):
                raise ValueError(f'Document {position} has a non-string text {text!r}.')
            position += 1
            yield text


def prepare_manifest(raw_dir: str, source: dict, chars_per_token: float, overwrite: bool) -> RawManifest:
    """The manifest to continue from: the existing one (same source and estimate rule) or a new one."""
    os.makedirs(raw_dir, exist_ok=True)
    manifest = None if overwrite else read_raw_manifest(raw_dir)
    if manifest is not None and (manifest.source != source or manifest.chars_per_token != chars_per_token):
        raise ValueError(
            f'{raw_dir} holds a download of {manifest.source} (chars_per_token={manifest.chars_per_token}), '
            f'not of {source} (chars_per_token={chars_per_token}); pass --overwrite to replace it.',
        )
    if manifest is None:
        manifest = RawManifest(source=source, chars_per_token=chars_per_token)
        write_raw_manifest(raw_dir, manifest)
    removed = remove_unlisted_shards(raw_dir, manifest)
    if removed:
        log.info('Removed %d incomplete or unlisted file(s) of an interrupted run: %s', len(removed), removed)
    return manifest


def download(raw_dir: str, source: dict, train_tokens: int, val_tokens: int, *,
             chars_per_token: float = DEFAULT_CHARS_PER_TOKEN, margin: float = DEFAULT_MARGIN,
             docs_per_shard: int = DEFAULT_DOCS_PER_SHARD, overwrite: bool = False,
             progress: bool = True) -> RawManifest:
    """Store documents of ``source`` in ``raw_dir`` until the token target is covered (see module doc)."""
    if chars_per_token <= 0 or margin < 1.0 or docs_per_shard < 1:
        raise ValueError(f'Need chars_per_token > 0, margin >= 1, docs_per_shard >= 1; got '
                         f'{chars_per_token}, {margin}, {docs_per_shard}.')
    target = math.ceil((train_tokens + val_tokens) * margin)
    if target < 1:
        raise ValueError('train_tokens + val_tokens is 0: nothing to download.')
    manifest = prepare_manifest(raw_dir, source, chars_per_token, overwrite)
    manifest.target_tokens = target
    if manifest.estimated_tokens >= target or manifest.source_exhausted:
        write_raw_manifest(raw_dir, manifest)
        log.info('%s already holds %d documents (~%d tokens) for a target of %d tokens: nothing to do.',
                 raw_dir, manifest.documents, manifest.estimated_tokens, target)
        return _checked(manifest, source)
    if manifest.documents:
        log.info('Resuming after %d documents in %d complete shards.', manifest.documents, len(manifest.shards))

    bar = DocTokenProgress('download', token_label='est tok', token_total=target, disable=not progress)
    bar.update(manifest.documents, int(manifest.estimated_tokens))
    shard: Optional[RawShardWriter] = None
    stored_docs, stored_bytes = manifest.documents, manifest.ascii_bytes
    reached = False
    for text in iter_texts(open_stream(source), stored_docs):
        if shard is None:
            shard = RawShardWriter(raw_dir, len(manifest.shards), stored_docs)
        ascii_bytes = len(to_ascii(text))
        shard.add(text, ascii_bytes)
        bar.update(1, int(ascii_bytes / chars_per_token) + 1)
        # integer totals, so the stopping point does not depend on where earlier runs were interrupted
        reached = estimate_tokens(stored_bytes + shard.ascii_bytes, stored_docs + shard.documents,
                                  chars_per_token) >= target
        if reached or shard.documents == docs_per_shard:
            manifest.shards.append(shard.finish())
            write_raw_manifest(raw_dir, manifest)
            stored_docs, stored_bytes = manifest.documents, manifest.ascii_bytes
            shard = None
            if reached:
                break
    if shard is not None:
        manifest.shards.append(shard.finish())
    bar.close()
    manifest.source_exhausted = not reached
    write_raw_manifest(raw_dir, manifest)
    _checked(manifest, source)
    if manifest.source_exhausted:
        log.warning('Source exhausted after %d documents (~%d tokens) before the target of %d tokens.',
                    manifest.documents, manifest.estimated_tokens, target)
    log.info('%s: %d documents in %d shards, ~%d tokens (target %d).', raw_dir, manifest.documents,
             len(manifest.shards), manifest.estimated_tokens, target)
    return manifest


def _checked(manifest: RawManifest, source: dict) -> RawManifest:
    if not manifest.documents:
        raise ValueError(f'The source {source} yielded no documents.')
    return manifest
