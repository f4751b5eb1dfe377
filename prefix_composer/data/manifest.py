"""The MDS folder's manifest, and the check training runs against it before the first batch.

``<mds_dir>/manifest.json`` (written last by ``create_mds``)::

    format:    "prefix_composer.mds/2" (every document framed as BOS ids EOS; format 1 had no BOS)
    config:    everything the content depends on: tokenizer {name, kwargs, content_sha256, bos_token_id,
               eos_token_id, add_special_tokens, split_special_tokens}, max_seq_len, ascii_rule,
               val_tokens, columns, compression, source {raw_dir, raw_manifest_sha256, documents, raw_source}
    splits:    {<split>: {documents, tokens, sequences, dropped_tail_tokens}}
    documents: {read, empty_after_ascii}
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from omegaconf import DictConfig
from omegaconf import OmegaConf as om
from transformers import PreTrainedTokenizerBase

from prefix_composer.config import run_loaders
from prefix_composer.data.shards import REBUILD_COMMAND, check_split_shards
from prefix_composer.files import read_json
from prefix_composer.tokenizer import tokenizer_content_hash

log = logging.getLogger(__name__)

MDS_FORMAT = 'prefix_composer.mds/2'
MANIFEST_NAME = 'manifest.json'
COLUMNS = {'tokens': 'ndarray:int32'}  # what llm-foundry's `text` loader reads


def mds_manifest_path(mds_dir: str) -> str:
    return os.path.join(mds_dir, MANIFEST_NAME)


def read_mds_manifest(mds_dir: str) -> Optional[dict]:
    """The manifest of ``mds_dir``, or None when there is none (data not made by create_mds)."""
    path = mds_manifest_path(mds_dir)
    if not os.path.isfile(path):
        return None
    manifest = read_json(path, 'MDS manifest', f'rebuild the data: {REBUILD_COMMAND}.')
    if manifest.get('format') != MDS_FORMAT:
        raise ValueError(
            f'{path} has format {manifest.get("format")!r}, but this code reads {MDS_FORMAT!r}, whose documents are '
            f'framed as BOS ids EOS (format prefix_composer.mds/1 had no BOS). Rebuild the data: {REBUILD_COMMAND}.',
        )
    return manifest


def check_run_data(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse to train on MDS data made with another tokenizer or sequence length.

    For each loader whose ``dataset.local`` holds a create_mds manifest: the manifest's tokenizer
    content hash must equal ``tokenizer_content_hash(tokenizer)``, its ``max_seq_len`` must equal
    the loader's (``dataset.max_seq_len``, else the run's ``max_seq_len``), and the loader's split
    must be one it wrote, and (without ``remote``) every shard file of the split must have the size
    its ``index.json`` records (``shards.check_split_shards``); otherwise ``ValueError``. A folder
    without manifest gets a warning.
    """
    run_hash = None
    for name, loader in run_loaders(cfg):
        dataset = loader.get('dataset') or {}
        local = dataset.get('local')
        if not local:
            continue
        local = str(local)
        manifest = read_mds_manifest(local)
        if manifest is None:
            if not os.path.isdir(local) and not dataset.get('remote'):
                raise FileNotFoundError(f'{name}.dataset.local {local} does not exist; build it with '
                                        'scripts/create_mds.py --run-config <this YAML>.')
            log.warning('%s: %s has no %s (not made by scripts/create_mds.py); tokenizer and max_seq_len '
                        'of the data are not checked.', name, local, MANIFEST_NAME)
            continue
        config = manifest['config']
        run_hash = run_hash or tokenizer_content_hash(tokenizer)
        if config['tokenizer']['content_sha256'] != run_hash:
            raise ValueError(
                f'{name}: {local} was tokenised with {config["tokenizer"]["name"]!r} '
                f'(content sha256 {config["tokenizer"]["content_sha256"][:12]}...), but this run uses a tokenizer with '
                f'content sha256 {run_hash[:12]}...; rebuild the data with scripts/create_mds.py for this YAML.',
            )
        max_seq_len = dataset.get('max_seq_len', om.select(cfg, 'max_seq_len'))
        if config['max_seq_len'] != max_seq_len:
            raise ValueError(f'{name}: {local} holds sequences of {config["max_seq_len"]} tokens but the run\'s '
                             f'max_seq_len is {max_seq_len}; rebuild the data or fix max_seq_len.')
        split = dataset.get('split')
        if split is not None and split not in manifest['splits']:
            raise ValueError(f'{name}: split {split!r} is not in {local} (it has {sorted(manifest["splits"])}).')
        if not dataset.get('remote'):
            check_split_shards(name, os.path.join(local, split or ''))
        log.info('%s: %s matches the run (tokenizer %s..., max_seq_len %d).', name, local, run_hash[:12], max_seq_len)
