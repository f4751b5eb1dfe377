"""Loading a run's YAML the llm-foundry way: the file merged with ``key=value`` overrides.

``run_name`` defaults to the YAML's file stem, so a preempted job restarted with the same
command finds its own ``save_folder`` and autoresumes.
"""

from __future__ import annotations

import os
import re
from typing import Sequence

from omegaconf import DictConfig, ListConfig
from omegaconf import OmegaConf as om

# Seed replica k >= 1 of a variant runs as ``<variant>_seed<k>``; this strips the suffix back off.
SEED_SUFFIX = re.compile(r'_seed\d+$')


def load_config(yaml_path: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The YAML merged with ``key=value`` overrides; ``run_name`` defaults to the YAML's stem."""
    if not os.path.isfile(yaml_path):
        raise FileNotFoundError(f'No such YAML: {yaml_path}')
    cfg = om.load(yaml_path)
    if overrides:
        cfg = om.merge(cfg, om.from_cli(list(overrides)))
    if not isinstance(cfg, DictConfig):
        raise ValueError(f'{yaml_path} must hold a mapping at the top level.')
    if cfg.get('run_name') is None:
        cfg.run_name = os.path.splitext(os.path.basename(yaml_path))[0]
    return cfg


def replica_run_name(variant: str, k: int) -> str:
    """Run name of seed replica ``k`` of ``variant``: the variant's own name for 0, else ``<variant>_seed<k>``."""
    return variant if k == 0 else f'{variant}_seed{k}'


def run_loaders(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """(name, loader config) of the train loader and every eval loader (a mapping or a list)."""
    out = []
    for key in ('train_loader', 'eval_loader'):
        loaders = om.select(cfg, key)
        if loaders is None:
            continue
        for i, loader in enumerate(loaders if isinstance(loaders, ListConfig) else [loaders]):
            out.append((key if isinstance(loaders, DictConfig) else f'{key}[{i}]', loader))
    return out
