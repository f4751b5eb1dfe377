"""The data-preparation settings of a run, read from the training YAML itself.

Both data scripts load the YAML with ``prefix_composer.config.load_config`` (the loader training
uses, ``key=value`` overrides included), so raw/MDS paths, tokenizer and sequence length cannot
disagree between preparation and training. The MDS folder is ``variables.data.mds_dir`` and must
be the ``local`` of both loaders; the split names are the loaders' ``split`` values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from llmfoundry.utils.builders import build_tokenizer
from omegaconf import DictConfig
from omegaconf import OmegaConf as om

from prefix_composer.config import load_config


@dataclass(frozen=True)
class DataRunConfig:
    yaml_path: str
    hf_dataset: Optional[str]
    hf_config: Optional[str]
    raw_dir: str
    mds_dir: str
    train_tokens: int
    val_tokens: int
    tokenizer_name: str
    tokenizer_kwargs: dict[str, Any]
    max_seq_len: int
    train_split: str
    val_split: str

    def build_tokenizer(self):
        """The tokenizer exactly as llm-foundry builds it for training (registry name or hub id)."""
        return build_tokenizer(self.tokenizer_name, dict(self.tokenizer_kwargs))


def _select(cfg: DictConfig, key: str, yaml_path: str, required: bool = True) -> Any:
    value = om.select(cfg, key, throw_on_missing=False)
    if value is None and required:
        raise ValueError(f'{yaml_path}: missing `{key}` (needed for data preparation; set it in the YAML or as {key}=...).')
    return value


def _non_negative_int(value: Any, key: str, yaml_path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f'{yaml_path}: `{key}` must be a non-negative integer, got {value!r}.')
    return value


def data_run_config(cfg: DictConfig, yaml_path: str) -> DataRunConfig:
    """Extract and validate the data settings from a loaded training config."""
    mds_dir = _select(cfg, 'variables.data.mds_dir', yaml_path)
    for loader in ('train_loader', 'eval_loader'):
        local = _select(cfg, f'{loader}.dataset.local', yaml_path)
        if str(local) != str(mds_dir):
            raise ValueError(
                f'{yaml_path}: {loader}.dataset.local is {local!r} but variables.data.mds_dir is {mds_dir!r}; '
                'training must read the folder that create_mds.py writes.',
            )
    max_seq_len = _select(cfg, 'max_seq_len', yaml_path)
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 1:
        raise ValueError(f'{yaml_path}: `max_seq_len` must be a positive integer, got {max_seq_len!r}.')
    train_split = str(_select(cfg, 'train_loader.dataset.split', yaml_path))
    val_split = str(_select(cfg, 'eval_loader.dataset.split', yaml_path))
    if train_split == val_split:
        raise ValueError(f'{yaml_path}: train and eval loaders read the same split {train_split!r}.')
    kwargs = _select(cfg, 'tokenizer.kwargs', yaml_path, required=False)
    return DataRunConfig(
        yaml_path=yaml_path,
        hf_dataset=_select(cfg, 'variables.data.hf_dataset', yaml_path, required=False),
        hf_config=_select(cfg, 'variables.data.hf_config', yaml_path, required=False),
        raw_dir=str(_select(cfg, 'variables.data.raw_dir', yaml_path)),
        mds_dir=str(mds_dir),
        train_tokens=_non_negative_int(_select(cfg, 'variables.data.train_tokens', yaml_path),
                                       'variables.data.train_tokens', yaml_path),
        val_tokens=_non_negative_int(_select(cfg, 'variables.data.val_tokens', yaml_path),
                                     'variables.data.val_tokens', yaml_path),
        tokenizer_name=str(_select(cfg, 'tokenizer.name', yaml_path)),
        tokenizer_kwargs=om.to_container(kwargs, resolve=True) if kwargs is not None else {},
        max_seq_len=max_seq_len,
        train_split=train_split,
        val_split=val_split,
    )


def load_data_run_config(yaml_path: str, overrides: Sequence[str] = ()) -> DataRunConfig:
    """``data_run_config`` of the YAML merged with ``key=value`` overrides, as training loads it."""
    return data_run_config(load_config(yaml_path, overrides), yaml_path)
