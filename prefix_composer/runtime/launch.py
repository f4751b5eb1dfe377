"""``composer train.py``'s main: load the YAML, pre-flight checks, then llm-foundry's ``train``.

Everything that can be checked before the first batch is checked here or while the Trainer is
built (objective arguments, model vocab, lm-eval tasks). Here, in order: keys that nothing would
read (``config_checks``), FSDP with the fused loss, then (pre-flight) the MDS data against the run
and its shard files, and the checkpoints autoresume will load.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

from composer.utils import dist, get_device
from llmfoundry.command_utils import train
from llmfoundry.utils.builders import build_tokenizer
from omegaconf import DictConfig
from omegaconf import OmegaConf as om

from prefix_composer.config import load_config
from prefix_composer.data.manifest import check_run_data
from prefix_composer.runtime.checkpoints import prepare_autoresume
from prefix_composer.runtime.config_checks import check_config_keys
from prefix_composer.runtime.multinode import install_node_signal_file_name
from prefix_composer.training.model import DEFAULT_LOSS_IMPL

log = logging.getLogger(__name__)


def check_parallelism(cfg: DictConfig) -> None:
    """Refuse FSDP with the fused loss, which reads ``lm_head.weight`` outside the model's forward,
    where FSDP holds only this rank's shard. llm-foundry ignores ``fsdp_config`` on one rank."""
    loss_impl = om.select(cfg, 'model.loss_impl', default=DEFAULT_LOSS_IMPL)
    if cfg.get('fsdp_config') is not None and loss_impl == 'fused' and dist.get_world_size() > 1:
        raise ValueError('fsdp_config is set with model.loss_impl: fused, whose LM head weight is a shard under FSDP; '
                         'set model.loss_impl: logits (full logits, the HF loss path) or remove fsdp_config (DDP).')


def preflight(cfg: DictConfig) -> None:
    """Checks that need no Trainer: the MDS data was made for this tokenizer and max_seq_len and its
    shard files are whole; autoresume will load the newest intact checkpoint (broken or half-written ones set aside)."""
    kwargs = om.to_container(cfg.tokenizer.kwargs, resolve=True) if cfg.tokenizer.get('kwargs') else {}
    check_run_data(cfg, build_tokenizer(cfg.tokenizer.name, kwargs))
    prepare_autoresume(cfg)


def configure_logging(cfg: DictConfig) -> None:
    """llm-foundry's log format, set up before the pre-flight, with ``python_log_level`` for our modules."""
    logging.basicConfig(format=f'%(asctime)s: rank{os.environ.get("RANK", "0")}[%(process)d][%(threadName)s]: '
                        '%(levelname)s: %(name)s: %(message)s')
    logging.getLogger('prefix_composer').setLevel(str(cfg.get('python_log_level') or 'warning').upper())


def main(argv: Sequence[str]) -> None:
    if not argv:
        raise SystemExit('usage: composer train.py yamls/<variant>.yaml [key=value ...]')
    cfg = load_config(argv[0], argv[1:])
    configure_logging(cfg)
    check_config_keys(cfg)
    check_parallelism(cfg)
    # With several ranks build_tokenizer (pre-flight) synchronises them, so the process group must
    # exist first; llm-foundry's train() finds it initialised.
    dist.initialize_dist(get_device(None), timeout=cfg.get('dist_timeout', 600.0))
    install_node_signal_file_name()
    preflight(cfg)
    om.clear_resolver('oc.env')  # as llm-foundry's train_from_yaml
    train(cfg)
