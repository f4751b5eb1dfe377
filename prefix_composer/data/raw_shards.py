"""Raw text shards: the downloader's output and ``create_mds``'s input.

Layout of ``raw_dir``::

    manifest.json              # RawManifest: source, estimate rule, completed shards in stream order
    shard-00000.parquet        # one column ``text`` (the documents as downloaded), zstd, row groups
    shard-00001.parquet        # of ``ROW_GROUP_DOCS`` documents
    ...

A shard is written to ``<name>.tmp`` and renamed when complete; only then is it appended to the
manifest (atomic rewrite). Files not listed in the manifest are leftovers of an interrupted run.
"""

from __future__ import annotations

import glob
import os
from dataclasses import asdict, dataclass, field
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from prefix_composer.files import read_json, sha256_file, write_json_atomic

RAW_FORMAT = 'prefix_composer.raw/1'
MANIFEST_NAME = 'manifest.json'
ROW_GROUP_DOCS = 10_000
SCHEMA = pa.schema([('text', pa.string())])


@dataclass
class RawShard:
    file: str
    first_document: int  # position of its first document in the source stream
    documents: int
    ascii_bytes: int  # sum of len(to_ascii(text)): input of the token estimate
    sha256: str


@dataclass
class RawManifest:
    source: dict
    chars_per_token: float
    shards: list[RawShard] = field(default_factory=list)
    target_tokens: int = 0
    source_exhausted: bool = False
    format: str = RAW_FORMAT

    @property
    def documents(self) -> int:
        return sum(s.documents for s in self.shards)

    @property
    def ascii_bytes(self) -> int:
        return sum(s.ascii_bytes for s in self.shards)

    @property
    def estimated_tokens(self) -> float:
        return estimate_tokens(self.ascii_bytes, self.documents, self.chars_per_token)

    def to_json(self) -> dict:
        out = asdict(self)
        out.update(documents=self.documents, ascii_bytes=self.ascii_bytes, estimated_tokens=int(self.estimated_tokens))
        return out

    @classmethod
    def from_json(cls, obj: dict, path: str) -> 'RawManifest':
        if obj.get('format') != RAW_FORMAT:
            raise ValueError(f'{path} is not a raw-shard manifest of format {RAW_FORMAT} (got {obj.get("format")!r}).')
        return cls(source=obj['source'], chars_per_token=obj['chars_per_token'],
                   shards=[RawShard(**s) for s in obj['shards']], target_tokens=obj['target_tokens'],
                   source_exhausted=obj['source_exhausted'])


def estimate_tokens(ascii_bytes: int, documents: int, chars_per_token: float) -> float:
    """Token estimate used by the download stopping rule: ASCII bytes / chars_per_token + one EOS per document."""
    return ascii_bytes / chars_per_token + documents


def manifest_path(raw_dir: str) -> str:
    return os.path.join(raw_dir, MANIFEST_NAME)


def read_raw_manifest(raw_dir: str) -> Optional[RawManifest]:
    path = manifest_path(raw_dir)
    if not os.path.isfile(path):
        return None
    return RawManifest.from_json(read_json(path, 'Raw manifest', 'delete it or rerun the download with --overwrite.'), path)


def write_raw_manifest(raw_dir: str, manifest: RawManifest) -> None:
    write_json_atomic(manifest_path(raw_dir), manifest.to_json())


def remove_unlisted_shards(raw_dir: str, manifest: RawManifest) -> list[str]:
    """Delete shard files (and temp files) that the manifest does not list; returns their names."""
    listed = {s.file for s in manifest.shards}
    removed = []
    for path in sorted(glob.glob(os.path.join(raw_dir, 'shard-*'))):
        if os.path.basename(path) not in listed:
            os.remove(path)
            removed.append(os.path.basename(path))
    return removed


class RawShardWriter:
    """Streams documents into ``shard-XXXXX.parquet.tmp`` one row group at a time; ``finish`` renames it."""

    def __init__(self, raw_dir: str, index: int, first_document: int, row_group_docs: int = ROW_GROUP_DOCS):
        self.name = f'shard-{index:05d}.parquet'
        self.path = os.path.join(raw_dir, self.name)
        self.tmp_path = self.path + '.tmp'
        self.first_document = first_document
        self.row_group_docs = row_group_docs
        self.writer = pq.ParquetWriter(self.tmp_path, SCHEMA, compression='zstd')
        self.pending: list[str] = []
        self.documents = 0
        self.ascii_bytes = 0

    def add(self, text: str, ascii_bytes: int) -> None:
        self.pending.append(text)
        self.documents += 1
        self.ascii_bytes += ascii_bytes
        if len(self.pending) >= self.row_group_docs:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.table({'text': self.pending}, schema=SCHEMA))
            self.pending = []

    def finish(self) -> RawShard:
        self._flush()
        self.writer.close()
        os.replace(self.tmp_path, self.path)
        return RawShard(file=self.name, first_document=self.first_document, documents=self.documents,
                        ascii_bytes=self.ascii_bytes, sha256=sha256_file(self.path))


def iter_raw_texts(raw_dir: str, manifest: RawManifest, batch_docs: int) -> Iterator[list[str]]:
    """Documents of all shards in stream order, in lists of at most ``batch_docs``.

    Each shard is checked against the manifest (present, sha256, row count) before it is read;
    a missing, altered or unreadable shard is a ``ValueError`` naming the file.
    """
    for shard in manifest.shards:
        path = os.path.join(raw_dir, shard.file)
        if not os.path.isfile(path):
            raise ValueError(f'Raw shard {path} listed in {manifest_path(raw_dir)} is missing; rerun the download.')
        if sha256_file(path) != shard.sha256:
            raise ValueError(f'Raw shard {path} does not match the sha256 in its manifest (altered or truncated); '
                             'rerun the download with --overwrite.')
        try:
            parquet = pq.ParquetFile(path)
            if parquet.metadata.num_rows != shard.documents:
                raise ValueError(f'has {parquet.metadata.num_rows} rows, manifest says {shard.documents}')
            for batch in parquet.iter_batches(batch_size=batch_docs, columns=['text']):
                yield batch.column(0).to_pylist()
        except (pa.ArrowException, OSError, ValueError, KeyError) as e:
            raise ValueError(f'Raw shard {path} is unreadable: {e}') from e
