"""The shard files of a local MDS split against the sizes its ``index.json`` records.

Streaming's index lists per shard ``raw_data`` (the ``.mds`` file) and, when compressed,
``zip_data`` (e.g. ``.mds.zstd``), each with ``basename`` and ``bytes``. A local split without
remote holds the zip of a compressed shard and, once Streaming has decompressed it, the raw file
too; a shard with neither cannot be read. A truncated shard otherwise passes every start-up
check and fails after "Starting training" (or hours in, at its first missing sample).
"""

from __future__ import annotations

import os

from prefix_composer.files import read_json

INDEX_NAME = 'index.json'
REBUILD_COMMAND = 'scripts/create_mds.py --run-config <the run YAML> --overwrite'
SHOWN = 5  # damaged files named in the message; the rest are counted


def damaged_shard_files(split_dir: str) -> list[str]:
    """One line per shard file of ``split_dir`` whose size differs from ``index.json``'s ``bytes``,
    and per shard with neither its raw nor its zip file (one directory listing, one stat per file)."""
    index_path = os.path.join(split_dir, INDEX_NAME)
    if not os.path.isfile(index_path):
        return [f'{index_path} is missing']
    with os.scandir(split_dir) as entries:
        sizes = {entry.name: entry.stat().st_size for entry in entries if entry.is_file()}
    problems = []
    for shard in read_json(index_path, 'MDS index', f'rebuild the data: {REBUILD_COMMAND}.')['shards']:
        files = [info for info in (shard.get('raw_data'), shard.get('zip_data')) if info]
        present = [info for info in files if info['basename'] in sizes]
        if not present:
            problems.append(f'{os.path.join(split_dir, files[0]["basename"])} is missing')
        problems += [f'{os.path.join(split_dir, info["basename"])} has {sizes[info["basename"]]:,} bytes, '
                     f'{index_path} records {info["bytes"]:,}'
                     for info in present if sizes[info['basename']] != info['bytes']]
    return problems


def check_split_shards(name: str, split_dir: str) -> None:
    """``ValueError`` naming the damaged or missing shard files of ``split_dir`` (``damaged_shard_files``)."""
    problems = damaged_shard_files(split_dir)
    if problems:
        more = f'; and {len(problems) - SHOWN} more' if len(problems) > SHOWN else ''
        raise ValueError(f'{name}: damaged MDS data: {"; ".join(problems[:SHOWN])}{more}. Truncated or missing shards '
                         f'fail only when training reaches them; rebuild the data: {REBUILD_COMMAND}.')
