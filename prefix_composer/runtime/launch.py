"""``composer train.py``'s main: load the YAML, pre-flight checks, then llm-foundry's ``train``.

Everything that can be checked before the first batch is checked here or while the Trainer is
built (objective arguments, model vocab, lm-eval tasks).
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

from llmfoundry.command_utils import train
from llmfoundry.utils.builders import build_tokenizer
from omegaconf import DictConfig
from omegaconf import OmegaConf as om

from prefix_composer.config import load_config
from prefix_composer.data.manifest import check_run_data
from prefix_composer.runtime.checkpoints import prepare_autoresume

log = logging.getLogger(__name__)


def preflight(cfg: DictConfig) -> None:
    """Checks that need no Trainer: the MDS data was made for this tokenizer and max_seq_len;
    autoresume will load the newest intact checkpoint (broken or half-written ones set aside)."""
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
    preflight(cfg)
    om.clear_resolver('oc.env')  # as llm-foundry's train_from_yaml
    train(cfg)
